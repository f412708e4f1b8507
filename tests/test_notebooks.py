"""The example notebooks run in a real Jupyter kernel (inside its running event loop), against
real worker processes, and leave no kernel or worker process behind."""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import torch as th
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from fedq.demo import AGGREGATOR, LESSON
from helpers import gone

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# Appended to the in-memory copy only: which processes this kernel is and started.
_PIDS_CELL = 'import os\nfrom fedq.handle import Workers\nprint("pids", os.getpid(), *[w.pid for w in Workers.of(hook.local_worker).spawned.values()])'


def _text(cell) -> str:
    """Everything a code cell showed: streams and the plain-text form of its results."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", ""))
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}")
    return "".join(parts)


def _execute(name: str) -> tuple[list, list[int]]:
    """Run examples/NAME with cwd = the repository root; return its code cells and the pids
    (kernel, then workers) it had, once nbclient has shut the kernel down."""
    path = EXAMPLES / name
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    stored = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in stored), f"{name} is stored with outputs"
    notebook.cells.append(new_code_cell(_PIDS_CELL))
    start = time.monotonic()
    NotebookClient(notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    assert time.monotonic() - start < 60, f"{name} took {time.monotonic() - start:.1f} s"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    pids = [int(pid) for pid in re.search(r"pids ([\d ]+)", _text(code[-1])).group(1).split()]
    return code[:-1], pids


def _assert_allgone(pids: list[int]) -> None:
    kernel, *workers = pids
    assert workers, "the notebook started no worker"
    assert gone(kernel, within=10), f"kernel {kernel} outlived nbclient's shutdown"
    left = [pid for pid in workers if not gone(pid, within=10)]
    assert not left, f"worker processes {left} outlived their kernel"


def test_remote_execution_lesson_notebook():
    cells, pids = _execute("remote_execution_lesson.ipynb")
    _assert_allgone(pids)
    sources = [cell.source for cell in cells]
    # The notebook is the lesson `fedq demo` prints: every LESSON cell, verbatim and in order.
    positions = []
    for source in LESSON:
        positions.append(sources.index(source, positions[-1] + 1 if positions else 0))
    out = [_text(cells[position]) for position in positions]

    assert re.fullmatch(r"\(\d+, \d+\)", out[1].strip())  # bob.pid, alice.pid
    assert out[2].strip() == "<VirtualWorker id:bob #objects:0>"
    assert re.fullmatch(r"\[PointerTensor \| me:\d+ -> bob:\d+\]", out[3].strip())
    assert re.fullmatch(r"\{\d+: tensor\(\[1, 2, 3, 4, 5\]\)\}", out[4].strip())
    assert re.fullmatch(r"\[PointerTensor \| me:\d+ -> alice:\d+\]", out[5].strip())
    assert re.fullmatch(r"\{\d+: \[PointerTensor \| alice:\d+ -> bob:\d+\]\}", out[6].strip())
    assert "tensor([ 2,  4,  6,  8, 10])" in out[8]
    assert re.fullmatch(r"\[PointerTensor \| me:\d+ -> bob:\d+\]", out[9].strip())  # peeled one level
    assert out[10].strip() == "tensor([1, 2, 3, 4, 5])"
    assert out[12].strip() == "({}, {})"  # del y freed bob's result and alice's pointer
    assert "PointerTensor | alice:" in out[13]
    assert out[14].strip() == "({}, {})"  # del x: deletes travelled hop by hop


def test_trusted_aggregator_notebook():
    cells, pids = _execute("trusted_aggregator.ipynb")
    _assert_allgone(pids)
    sources = [cell.source for cell in cells]
    for source in AGGREGATOR[2:]:  # the first two are adapted to find workers/housing.py from the root
        assert source in sources
    out = [_text(cell) for cell in cells]
    assert any(re.fullmatch(r"\[\[PointerTensor \| me:\d+ -> bob:\d+\]\]", text.strip()) for text in out)  # bob.search
    training = out[sources.index(AGGREGATOR[3])]
    assert "round  1:" in training and "round 10:" in training and "bob loss" in training and "alice loss" in training
    weights = out[sources.index(AGGREGATOR[4])]
    numbers = [float(n) for n in re.findall(r"-?\d+\.\d+", weights)]
    assert len(numbers) == 5 and all(abs(a - b) < 0.1 for a, b in zip(numbers, [3, -1, -2, -0.5, 2])), weights
    assert out[sources.index(AGGREGATOR[5])].strip() == "[2, 2, 0]"  # only each owner's data is left


def test_secret_sharing_notebook():
    """PySyft 0.2.9's Parts 09 and 10 (only the import changed, adaptations said in the notebook),
    then the one-call secure round over owners that enforce it: the values a user reads."""
    cells, pids = _execute("secret_sharing.ipynb")
    _assert_allgone(pids)

    def out(first_line: str) -> str:
        (text,) = [_text(cell) for cell in cells if cell.source.startswith(first_line)]
        return text.strip()

    assert out("decrypt(a, b, c)") == "25" and out("decrypt(*add(x,y))") == "30"  # by hand
    assert out("encrypted_x.get()") == "tensor([25])"
    assert out("list(bob._tensors.values())") == "[]"  # .get() took the shares back
    shares = []
    for owner in ("Bob", "Alice", "Bill"):
        # an int64 (torch names any other dtype), random-looking: |share| < 2^32 has odds 2^-31
        match = re.fullmatch(r"tensor\(\[(-?\d+)\]\)", out(f"# {owner}'s share"))
        assert match, out(f"# {owner}'s share")
        shares.append(int(match.group(1)))
    assert all(2**32 < abs(share) < 2**63 for share in shares) and len(set(shares)) == 3, shares
    assert sum(shares) % 2**64 == 25  # what was shown are the shares themselves
    assert out("(bobs_share + alices_share + bills_share)") == "tensor([25])"
    assert out("z = x + y") == "tensor([30])" and out("z = x - y") == "tensor([20])"
    assert out("# multiplication") == "tensor([125])"
    assert out("# matrix multiplication") == repr(th.tensor([[1, 2], [3, 4]]).mm(th.tensor([[2, 0], [0, 2]])))
    assert [out(f"z = {comparison}") for comparison in ("x > y", "x <= y", "x == y\n", "x == y + 20")] == ["tensor([1])", "tensor([0])", "tensor([0])", "tensor([1])"]
    assert out("x = torch.tensor([2, 3, 4, 1])") == "tensor(4)"
    assert out("x = torch.tensor([[2, 3], [4, 1]])") == "tensor([4, 3])"

    # Part 10: both sections train; one owner's shared parameter is pointers only; the encrypted
    # average equals the average in the clear to fixed precision
    assert "Train Epoch: 3" in out("t = time.time()\n\nfor epoch in range(1,")
    assert re.search(r"Average loss: \d+\.\d+", out("test()"))
    secure = out("t = time.time()\n\nfor epoch in range(args.epochs)")
    assert "Epoch 3" in secure and re.search(r"Test set: Average loss: \d+\.\d+", secure)
    assert re.fullmatch(r"FixedPrecisionTensor>\[AdditiveSharingTensor\]\n\t-> \[PointerTensor \| me:\d+ -> bob:\d+\]\n\t-> \[PointerTensor \| me:\d+ -> alice:\d+\]", out("spdz_params[0]"))
    assert float(out("# (ours) the average in the clear")) <= 1.001e-3

    # the one-call round over owners refusing updates in the clear
    assert "round  6:" in out("torch.manual_seed(0)")
    numbers = [float(n) for n in re.findall(r"-?\d+\.\d+", out("model.weight.data, model.bias.data"))]
    assert len(numbers) == 5 and all(abs(a - b) < 0.1 for a, b in zip(numbers, [3, -1, -2, -0.5, 2])), numbers
    assert out('w = owner_bob.search("#housing", "#data")[0]').startswith("AggregateTooSmallError")
    assert out("hook.local_worker.sync()") == "[2, 2]"  # only each owner's data is left
