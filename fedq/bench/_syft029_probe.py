"""Run by PySyft 0.2.9's own interpreter (see syft029.py): its figures on fedq's work, as JSON.

Standalone on purpose: that interpreter has neither fedq nor this torch. It
borrows `timing.py` and `payload.py` (standard library and torch only) by path,
so the figures are taken on the same data exactly as fedq's are.
"""

import json
import sys
from pathlib import Path

import syft as sy
import torch as th

sys.path.append(str(Path(__file__).parent))  # appended, after the imports above: nothing of theirs is shadowed
from payload import small_tensor, tensor_of  # noqa: E402
from timing import per_call  # noqa: E402


def main() -> None:
    plan = json.loads(sys.argv[1])
    hook = sy.TorchHook(th)
    bob = sy.VirtualWorker(hook, id="bob")
    alice = sy.VirtualWorker(hook, id="alice")
    x = small_tensor().send(bob)
    one = per_call(lambda: (x + x).get(), number=plan["number"], repeats=plan["repeats"], warmup=plan["number"])
    chain = small_tensor().send(bob).send(alice)
    two = per_call(lambda: (chain + chain).get(), number=plan["number"], repeats=plan["repeats"], warmup=plan["number"])

    def burst() -> None:
        for _ in range(plan["ops"]):
            y = x + x  # noqa: F841
    ops = per_call(burst, number=1, repeats=plan["repeats"])
    big = tensor_of(64)
    transfer = per_call(lambda: big.send(bob).get(), number=1, repeats=plan["repeats"])
    print(json.dumps({
        "syft_version": getattr(sy, "__version__", "0.2.9"),
        "latency_1hop": one.to_json(),
        "latency_2hop": two.to_json(),
        "ops_per_s": plan["ops"] / ops.median,
        "transfer_64_gibs": 2 * 64 / 1024 / transfer.median,
    }))


if __name__ == "__main__":
    main()
