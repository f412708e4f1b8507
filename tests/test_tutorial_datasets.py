"""PySyft 0.2.9's tutorials Part 06 (MNIST with a CNN) and Part 07 (FederatedDataset), cell by
cell, on real worker processes: federated datasets (fedq/datasets.py).

Our own transcription of the cells: only the import is changed, and what a cell downloads is a
synthetic stand-in made here (MNIST: digit-like seven-segment images; Boston housing: 13
features and a price linear in them). Where a tutorial trains epochs, a few batches are trained;
the settings the tutorials put in their `Arguments` cell are set for that (named below). The
trained weights must equal plain torch's on the same batches to 1e-5.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import re
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim

import fedq as sy

# --------------------------------------------------------------------------- stand-ins for downloads

#: the segments (a top, b top right, c bottom right, d bottom, e bottom left, f top left, g middle) of each digit
_SEGMENTS = {0: "abcdef", 1: "bc", 2: "abged", 3: "abgcd", 4: "fgbc", 5: "afgcd", 6: "afgedc", 7: "abc", 8: "abcdefg", 9: "abcdfg"}


def synthetic_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in for MNIST (no download): `n` 28x28 uint8 images of seven-segment digits, each
    shifted by up to 2 pixels, strokes 2-3 pixels thick, of random brightness, over noise; and
    their labels. The same for the same seed."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.zeros(n, 28, 28)
    for i, label in enumerate(labels.tolist()):
        t = int(torch.randint(2, 4, (1,), generator=g))
        dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
        top, mid, bottom, left, right = 4 + dy, 13 + dy, 22 + dy, 8 + dx, 18 + dx
        boxes = {
            "a": (top, top + t, left, right + t), "g": (mid, mid + t, left, right + t), "d": (bottom, bottom + t, left, right + t),
            "f": (top, mid + t, left, left + t), "b": (top, mid + t, right, right + t),
            "e": (mid, bottom + t, left, left + t), "c": (mid, bottom + t, right, right + t),
        }
        for segment in _SEGMENTS[label]:
            r0, r1, c0, c1 = boxes[segment]
            images[i, r0:r1, c0:c1] = 1.0
    images = images * (0.6 + 0.4 * torch.rand(n, 1, 1, generator=g)) + 0.15 * torch.rand(n, 28, 28, generator=g)
    return (images.clamp(0, 1) * 255).to(torch.uint8), labels


class _SyntheticMNIST(torch.utils.data.Dataset):
    """`datasets.MNIST(root, train=..., download=..., transform=...)` of torchvision, standing in:
    192 training and 100 test images of `synthetic_digits`; items are (transform(image), label)."""

    def __init__(self, root: str, train: bool = True, download: bool = False, transform=None) -> None:
        self.data, self.targets = synthetic_digits(192, seed=1) if train else synthetic_digits(100, seed=2)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        image = self.data[index]
        return (self.transform(image) if self.transform else image), int(self.targets[index])


class _ToTensor:  # torchvision's, for a uint8 (H, W) image: float (1, H, W) in [0, 1]
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.float().div(255).unsqueeze(0)


class _Normalize:
    def __init__(self, mean, std) -> None:
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std


class _Compose:
    def __init__(self, steps) -> None:
        self.steps = steps

    def __call__(self, image):
        for step in self.steps:
            image = step(image)
        return image


datasets = types.SimpleNamespace(MNIST=_SyntheticMNIST)  # (the tutorial: from torchvision import datasets, transforms)
transforms = types.SimpleNamespace(ToTensor=_ToTensor, Normalize=_Normalize, Compose=_Compose)


@contextlib.contextmanager
def _threads_as_on(worker):
    """Run this process's torch on the threads `worker` runs on (its thread budget): a convolution
    sums in another order on another count, and a CNN's weights part by ~1e-4 in three epochs."""
    before = torch.get_num_threads()
    torch.set_num_threads(worker.ping().threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _assert_same(model: nn.Module, reference: nn.Module) -> None:
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert type(p) is nn.Parameter, f"{name} is still a {type(p).__name__}"
        assert torch.allclose(p, q, atol=1e-5), (name, (p - q).abs().max())


# --------------------------------------------------------------------------- Part 06

class Net(nn.Module):  # the tutorial's CNN, exactly
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2, 2)
        x = x.view(-1, 4 * 4 * 50)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


class Arguments():
    def __init__(self):
        self.batch_size = 16  # the tutorial: 64, over 60,000 images; here 192
        self.test_batch_size = 1000
        self.epochs = 3  # the tutorial: 10
        self.lr = 0.1  # the tutorial: 0.01 (over ~9,400 batches; here 36)
        self.momentum = 0.5
        self.no_cuda = False
        self.seed = 1
        self.log_interval = 4  # the tutorial: 30 (here an epoch is 12 batches)
        self.save_model = False


def train(args, model, device, federated_train_loader, optimizer, epoch):
    model.train()
    for batch_idx, (data, target) in enumerate(federated_train_loader):  # <-- now it is a distributed dataset
        model.send(data.location)  # <-- NEW: send the model to the right location
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        model.get()  # <-- NEW: get the model back
        if batch_idx % args.log_interval == 0:
            loss = loss.get()  # <-- NEW: get the loss back
            print('Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}'.format(
                epoch, batch_idx * args.batch_size, len(federated_train_loader) * args.batch_size,
                100. * batch_idx / len(federated_train_loader), loss.item()))


def test(args, model, device, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction='sum').item()  # sum up batch loss
            pred = output.argmax(1, keepdim=True)  # get the index of the max log-probability
            correct += pred.eq(target.view_as(pred)).sum().item()

    test_loss /= len(test_loader.dataset)

    print('\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n'.format(
        test_loss, correct, len(test_loader.dataset),
        100. * correct / len(test_loader.dataset)))


test.__test__ = False  # (the tutorial's name, not one of pytest's tests)


def train_plain(args, model, device, train_loader, optimizer, epoch):
    """The train() of PyTorch's MNIST example that the tutorial started from: no send, no get."""
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        if batch_idx % args.log_interval == 0:
            print('Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}'.format(
                epoch, batch_idx * args.batch_size, len(train_loader) * args.batch_size,
                100. * batch_idx / len(train_loader), loss.item()))


class _LocalLoader:
    """Plain torch's replay of the FederatedDataLoader: the same parts, the same orders (a pass
    draws torch.randperm per part, in the workers' order), each batch cut here."""

    def __init__(self, parts, batch_size):
        self.parts, self.batch_size = parts, batch_size

    def __iter__(self):
        for data, target in self.parts:
            order = torch.randperm(len(data))
            for start in range(0, len(data), self.batch_size):
                index = order[start:start + self.batch_size]
                yield data[index], target[index]

    def __len__(self):
        return sum(math.ceil(len(data) / self.batch_size) for data, _ in self.parts)


def test_part06_federated_learning_on_mnist_using_a_cnn(hook, bob, alice, capsys):
    # (cells 1-2: the imports and hook, bob, alice: the session's workers; the tutorial's
    # `from torchvision import datasets, transforms` is the stand-in above)
    args = Arguments()

    use_cuda = not args.no_cuda and torch.cuda.is_available()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if use_cuda else "cpu")
    kwargs = {'num_workers': 1, 'pin_memory': True} if use_cuda else {}

    federated_train_loader = sy.FederatedDataLoader(  # <-- this is now a FederatedDataLoader
        datasets.MNIST('../data', train=True, download=True,
                       transform=transforms.Compose([
                           transforms.ToTensor(),
                           transforms.Normalize((0.1307,), (0.3081,))
                       ]))
        .federate((bob, alice)),  # <-- NEW: we distribute the dataset across all the workers, it's now a FederatedDataset
        batch_size=args.batch_size, shuffle=True, **kwargs)

    test_loader = torch.utils.data.DataLoader(
        datasets.MNIST('../data', train=False, transform=transforms.Compose([
                           transforms.ToTensor(),
                           transforms.Normalize((0.1307,), (0.3081,))
                       ])),
        batch_size=args.test_batch_size, shuffle=True, **kwargs)

    assert federated_train_loader.federated_dataset.workers == ["bob", "alice"]
    assert len(federated_train_loader) == 12  # 96 images each, 6 batches each
    assert len(bob._objects) == 2 and len(alice._objects) == 2  # each part: its images and labels, nothing else

    # (added: the test set before any training, to compare with)
    rng = torch.get_rng_state()
    model = Net().to(device)
    reference = copy.deepcopy(model)
    test(args, model, device, test_loader)

    # the tutorial's training cell
    model = model.to(device)
    optimizer = optim.SGD(model.parameters(), lr=args.lr)  # TODO momentum is not supported at the moment

    for epoch in range(1, args.epochs + 1):
        train(args, model, device, federated_train_loader, optimizer, epoch)
        test(args, model, device, test_loader)

    printed = capsys.readouterr().out
    train_losses = [float(x) for x in re.findall(r"Loss: (\d+\.\d+)", printed)]
    tests = [(float(loss), int(right)) for loss, right in re.findall(r"Average loss: (\d+\.\d+), Accuracy: (\d+)/100", printed)]
    assert re.findall(r"Train Epoch: (\d) \[(\d+)/192", printed) == [(e, str(b)) for e in "123" for b in (0, 64, 128)]
    assert len(tests) == 1 + args.epochs, printed
    assert train_losses[-1] < train_losses[0] - 0.5, printed  # the loss falls
    assert [loss for loss, _ in tests] == sorted((loss for loss, _ in tests), reverse=True), printed  # the test loss falls every epoch
    assert tests[0][1] <= 20 and tests[-1][1] >= 60, printed  # held-out accuracy: chance (~10%) -> 60% or more

    # Plain torch on the same batches (the same shuffles: replayed from the same generator state)
    # gives the same model, to 1e-5, and prints the same losses.
    data, targets = next(iter(torch.utils.data.DataLoader(federated_train_loader_source(), batch_size=192)))
    local_loader = _LocalLoader([(data[:96], targets[:96]), (data[96:], targets[96:])], args.batch_size)
    torch.set_rng_state(rng)
    Net()  # (the model's initialisation drew from the generator: draw the same)
    optimizer = optim.SGD(reference.parameters(), lr=args.lr)
    list(test_loader)  # (each test() drew the test set's shuffle: the same draws, without the model)
    with _threads_as_on(bob):
        for epoch in range(1, args.epochs + 1):
            train_plain(args, reference, device, local_loader, optimizer, epoch)
            list(test_loader)
    replayed = capsys.readouterr().out
    numbers = lambda text: [float(x) for x in re.findall(r"\d+\.\d+|\d+", text)]  # noqa: E731
    trained = "".join(line + "\n" for line in printed.splitlines() if line.startswith("Train Epoch"))
    assert re.sub(r"\d", "#", replayed) == re.sub(r"\d", "#", trained)  # the same lines, and numbers within 1e-5:
    assert numbers(replayed) == pytest.approx(numbers(trained), abs=1e-5)
    _assert_same(model, reference)
    del federated_train_loader
    gc.collect()
    assert bob._objects == {} and alice._objects == {}


def federated_train_loader_source():
    return datasets.MNIST('../data', train=True, download=True, transform=transforms.Compose([
        transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]))


# --------------------------------------------------------------------------- Part 07

@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")  # (the tutorial's float(loss))
def test_part07_federated_learning_with_federated_dataset(hook, bob, alice, sandbox_workers, capsys):
    epochs = 5  # (the tutorial's parameter cell: 50)

    import torch as th
    notebook = {"th": th}  # (the notebook's globals(): the sandbox puts hook, the workers and grid there)
    sy.create_sandbox(notebook, verbose=False)
    grid = notebook["grid"]

    boston_data = grid.search("#boston", "#data")
    boston_target = grid.search("#boston", "#target")

    n_features = boston_data['alice'][0].shape[1]
    n_targets = 1

    model = th.nn.Linear(n_features, n_targets)
    reference = copy.deepcopy(model)

    # Cast the result in BaseDatasets
    datasets = []
    for worker in boston_data.keys():
        dataset = sy.BaseDataset(boston_data[worker][0], boston_target[worker][0])
        datasets.append(dataset)

    # Build the FederatedDataset object
    dataset = sy.FederatedDataset(datasets)
    print(dataset.workers)
    optimizers = {}
    for worker in dataset.workers:
        optimizers[worker] = th.optim.Adam(params=model.parameters(), lr=1e-2)

    train_loader = sy.FederatedDataLoader(dataset, batch_size=32, shuffle=False, drop_last=False)

    for epoch in range(1, epochs + 1):
        loss_accum = 0
        for batch_idx, (data, target) in enumerate(train_loader):
            model.send(data.location)

            optimizer = optimizers[data.location.id]
            optimizer.zero_grad()
            pred = model(data)
            loss = ((pred.view(-1) - target)**2).mean()
            loss.backward()
            optimizer.step()

            model.get()
            loss = loss.get()

            loss_accum += float(loss)

            if batch_idx % 8 == 0:
                print('Train Epoch: {} [{}/{} ({:.0f}%)]\tBatch loss: {:.6f}'.format(
                    epoch, batch_idx, len(train_loader),
                       100. * batch_idx / len(train_loader), loss.item()))

        print('Total loss', loss_accum)

    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[:3] == ["Setting up Sandbox...", "Done!", "['bob', 'theo', 'jason', 'alice', 'andy', 'jon']"]
    assert len(train_loader) == 18  # 506 houses: 84 on each worker (jon 86), 3 batches of up to 32 each
    assert re.findall(r"Train Epoch: (\d) \[(\d+)/18 \((\d+)%\)\]", printed) == [
        (str(e), b, p) for e in range(1, epochs + 1) for b, p in (("0", "0"), ("8", "44"), ("16", "89"))]
    totals = [float(line.split()[-1]) for line in lines if line.startswith("Total loss")]
    assert len(totals) == epochs and all(a > b for a, b in zip(totals, totals[1:])), totals  # falls every epoch
    assert all(not isinstance(p, sy.Pointer) for p in model.parameters())

    # Plain torch on the sandbox's shards (its stand-in, made the same way), the same batches in
    # the same order, one Adam per worker: the same losses and the same model.
    from fedq.sandbox import shards, stand_in

    features, prices = stand_in("boston")
    parts = dict(zip(dataset.workers, zip(shards(features, 6), shards(prices, 6))))
    optimizers = {worker: th.optim.Adam(params=reference.parameters(), lr=1e-2) for worker in parts}
    local_totals = []
    for epoch in range(1, epochs + 1):
        loss_accum = 0
        for worker, (x, y) in parts.items():
            for start in range(0, len(x), 32):
                optimizer = optimizers[worker]
                optimizer.zero_grad()
                loss = ((reference(x[start:start + 32]).view(-1) - y[start:start + 32]) ** 2).mean()
                loss.backward()
                optimizer.step()
                loss_accum += float(loss)
        local_totals.append(loss_accum)
    assert totals == pytest.approx(local_totals, rel=1e-5)
    _assert_same(model, reference)


# --------------------------------------------------------------------------- the loader's promises

def test_batches_are_cut_on_the_worker_from_its_stored_part(hook, bob, alice):
    """After federate, iterating moves no training data: each batch is an index op on the part
    (a shuffled pass: one permutation sent per worker), and what comes back is pointers there."""
    data, targets = torch.randn(2000, 64), torch.arange(2000)
    federated = sy.BaseDataset(data, targets).federate(bob, alice)
    assert [len(federated["bob"]), len(federated["alice"])] == [1000, 1000] and len(federated) == 2000
    assert federated["bob"].location is bob and federated[alice].location is alice
    client = hook.local_worker
    client.sync()
    before = client.stats()["bytes_sent"]
    torch.manual_seed(0)
    batches = list(sy.FederatedDataLoader(federated, batch_size=100, shuffle=True))
    client.sync()
    sent = client.stats()["bytes_sent"] - before
    # two permutations (16 KB) and 60 small ops (~27 KB here), not the data (512 KB)
    assert sent < data.numel() * data.element_size() // 10, sent
    assert [d.location.id for d, _ in batches] == ["bob"] * 10 + ["alice"] * 10
    assert all(isinstance(d, sy.PointerTensor) and d.shape == (100, 64) and t.location is d.location for d, t in batches)
    got = [(d.get(), t.get()) for d, t in batches]
    seen = torch.cat([t for _, t in got])
    assert sorted(seen[:1000].tolist()) == list(range(1000)) and sorted(seen[1000:].tolist()) == list(range(1000, 2000))
    assert not torch.equal(seen, targets)  # shuffled...
    assert all(torch.equal(d, data[t]) for d, t in got)  # ...each row with its own target
    torch.manual_seed(0)  # the same seed, the same order
    again = torch.cat([t.get() for _, t in sy.FederatedDataLoader(federated, batch_size=100, shuffle=True)])
    assert torch.equal(again, seen)
    assert len(bob._objects) == 2 and len(alice._objects) == 2  # the part only: the permutations and batches are freed


def test_batches_in_order_sizes_drop_last_and_len(bob, alice):
    federated = sy.FederatedDataset([
        sy.BaseDataset(torch.arange(10.0), torch.arange(10)).send(bob),
        sy.BaseDataset(torch.arange(7.0), torch.arange(7) + 100).send(alice),
    ])
    assert federated.workers == ["bob", "alice"] and len(federated) == 17
    assert "bob, alice" in repr(federated) and "17" in repr(federated)
    loader = sy.FederatedDataLoader(federated, batch_size=4)
    assert len(loader) == 5
    assert [t.get().tolist() for _, t in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [100, 101, 102, 103], [104, 105, 106]]
    loader = sy.FederatedDataLoader(federated, batch_size=4, drop_last=True)
    assert len(loader) == 3
    assert [t.get().tolist() for _, t in loader] == [[0, 1, 2, 3], [4, 5, 6, 7], [100, 101, 102, 103]]
    assert len(sy.FederatedDataLoader(federated, batch_size=8, drop_last=True)) == 1  # alice's 7 make no full batch
    # a transform is applied to each batch, on the worker (torch ops on a pointer)
    federated["bob"].transform_ = lambda x: x * 10
    data, target = next(iter(sy.FederatedDataLoader(federated, batch_size=3)))
    assert data.get().tolist() == [0.0, 10.0, 20.0] and target.get().tolist() == [0, 1, 2]


def test_one_batch_of_each_worker_a_step(bob, alice, carol):
    federated = sy.FederatedDataset([
        sy.BaseDataset(torch.arange(4.0), torch.arange(4)).send(bob),
        sy.BaseDataset(torch.arange(6.0), torch.arange(6) + 10).send(alice),
        sy.BaseDataset(torch.arange(2.0), torch.arange(2) + 20).send(carol),
    ])
    loader = sy.FederatedDataLoader(federated, batch_size=2, iter_per_worker=True)
    steps = [{w.id: t.get().tolist() for w, (d, t) in step.items()} for step in loader]
    assert steps == [{"bob": [0, 1], "alice": [10, 11], "carol": [20, 21]}]  # until one worker runs out
    assert len(loader) == 1
    # two iterators: bob's and alice's batches side by side; bob's run out and carol's take over
    loader = sy.FederatedDataLoader(federated, batch_size=2, num_iterators=2)
    steps = [{w.id: t.get().tolist() for w, (d, t) in step.items()} for step in loader]
    assert steps == [{"bob": [0, 1], "alice": [10, 11]}, {"bob": [2, 3], "alice": [12, 13]}, {"carol": [20, 21], "alice": [14, 15]}]
    assert len(loader) == 3


def test_a_dataset_sent_moves_and_comes_back(bob):
    dataset = sy.BaseDataset(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), torch.tensor([0, 1, 0]))
    assert len(dataset) == 3 and dataset.location is None
    data, target = dataset[1]
    assert data.tolist() == [3.0, 4.0] and int(target) == 1
    assert dataset.send(bob) is dataset
    assert dataset.location is bob and isinstance(dataset.data, sy.PointerTensor) and len(dataset) == 3
    data, target = dataset[0:2]
    assert data.location is bob and data.get().tolist() == [[1.0, 2.0], [3.0, 4.0]] and target.get().tolist() == [0, 1]
    dataset.transform(lambda x: x + 1)  # the whole data, on bob
    assert dataset.get() is dataset and dataset.location is None
    assert dataset.data.tolist() == [[2.0, 3.0], [4.0, 5.0], [6.0, 7.0]] and dataset.targets.tolist() == [0, 1, 0]
    assert bob._objects == {}
    federated = torch.utils.data.TensorDataset(torch.arange(5.0), torch.arange(5)).federate((bob,))
    assert federated.get_dataset("bob").data.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and federated.workers == []


def test_bad_input_is_refused_with_a_named_error(bob, alice):
    with pytest.raises(sy.DatasetMismatchError, match="3 data points, 4 targets"):
        sy.BaseDataset(torch.zeros(3, 2), torch.zeros(4))
    with pytest.raises(sy.DatasetMismatchError, match="data 'bob', targets 'alice'"):
        sy.BaseDataset(torch.zeros(3).send(bob), torch.zeros(3).send(alice))
    with pytest.raises(sy.DatasetMismatchError, match="targets here"):
        sy.BaseDataset(torch.zeros(3).send(bob), torch.zeros(3))
    dataset = sy.BaseDataset(torch.zeros(4, 2), torch.zeros(4)).send(bob)
    with pytest.raises(sy.DatasetAlreadySentError, match="already on 'bob'"):
        dataset.send(bob)  # a dataset sent twice
    with pytest.raises(sy.DatasetAlreadySentError, match="already on 'bob'"):
        dataset.send(alice)
    with pytest.raises(sy.DatasetAlreadySentError, match="already on 'bob'"):
        dataset.federate((bob, alice))
    assert dataset.location is bob and len(bob._objects) == 2  # nothing more was sent
    other = sy.BaseDataset(torch.ones(2, 2), torch.ones(2)).send(bob)
    with pytest.raises(sy.DatasetAlreadySentError, match="two parts .* on 'bob'"):
        sy.FederatedDataset([dataset, other])
    with pytest.raises(sy.DatasetNotSentError):
        sy.FederatedDataset([sy.BaseDataset(torch.zeros(2), torch.zeros(2))])
    federated = sy.FederatedDataset([dataset])
    for bad in (0, -1, 1.5, True, None, "8"):
        with pytest.raises(sy.BatchSizeError, match="positive integer"):
            sy.FederatedDataLoader(federated, batch_size=bad)
    with pytest.raises(TypeError, match="torch.utils.data.DataLoader"):
        sy.FederatedDataLoader(sy.BaseDataset(torch.zeros(2), torch.zeros(2)), batch_size=2)
    assert all(issubclass(e, sy.FedqError) for e in (sy.DatasetMismatchError, sy.DatasetAlreadySentError, sy.DatasetNotSentError, sy.BatchSizeError))


def test_batches_of_an_owners_private_data_stay_private(data_owners):
    """The loader goes through each worker's privacy rule: a batch of an owner's private houses
    does not come back, a model trained on it does (the owner allows updates), and the loss of an
    unshuffled batch (rows of the dataset, in order) leaves only as a DP release."""
    bob, alice = data_owners
    parts = [sy.BaseDataset(w.search("#housing", "#data")[0], w.search("#housing", "#target")[0]) for w in (bob, alice)]
    federated = sy.FederatedDataset(parts)
    assert federated.workers == ["owner_bob", "owner_alice"] and len(federated) == 128
    for shuffle in (False, True):
        data, target = next(iter(sy.FederatedDataLoader(federated, batch_size=16, shuffle=shuffle)))
        with pytest.raises(sy.GetNotPermittedError):
            data.get()  # an attacker's loader is no way around the owner's rule
        with pytest.raises(sy.GetNotPermittedError):
            target.get()
        model = nn.Linear(4, 1)
        model.send(data.location)
        loss = ((model(data) - target) ** 2).mean()
        loss.backward()
        with pytest.raises(sy.GetNotPermittedError):
            loss.get()
        if shuffle:  # rows picked by a permutation are not the dataset's rows in order: no release
            with pytest.raises(sy.NotReleasableError):
                loss.get(epsilon=0.5, bounds=(0.0, 100.0))
        else:
            assert float(loss.get(epsilon=0.5, bounds=(0.0, 100.0))) >= 0.0
        model.get()  # the owner's datasets allow model updates
        assert all(type(p) is nn.Parameter for p in model.parameters())


def test_a_part_behind_a_chain_is_cut_where_its_data_is(bob, alice):
    """me -> alice -> bob: batches are made on bob (relayed by alice), shuffled or not."""
    part = sy.BaseDataset(torch.arange(10.0).send(bob).send(alice), torch.arange(10).send(bob).send(alice))
    federated = sy.FederatedDataset([part])
    assert federated.workers == ["alice"]
    assert [t.get().get().tolist() for _, t in sy.FederatedDataLoader(federated, batch_size=4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    torch.manual_seed(3)
    batches = [(d.get().get(), t.get().get()) for d, t in sy.FederatedDataLoader(federated, batch_size=4, shuffle=True)]
    torch.manual_seed(3)
    assert torch.cat([t for _, t in batches]).tolist() == torch.randperm(10).tolist()  # the order drawn here
    assert all(torch.equal(d, t.float()) for d, t in batches)
    del part, federated
    gc.collect()
    assert len(alice._objects) == 0 and len(bob._objects) == 0


def test_options_of_local_loading_processes_are_warned_about(bob, caplog):
    """Part 06 passes torch's DataLoader options on CUDA (num_workers, pin_memory): as PySyft, the
    loader says it does not use them, and loads as without them."""
    federated = sy.FederatedDataset([sy.BaseDataset(torch.arange(4.0), torch.arange(4)).send(bob)])
    with caplog.at_level("WARNING", logger="fedq.datasets"):
        loader = sy.FederatedDataLoader(federated, batch_size=2, **{'num_workers': 1, 'pin_memory': True})
    assert "The following options are not supported: num_workers: 1, pin_memory: True" in caplog.text
    assert [t.get().tolist() for _, t in loader] == [[0, 1], [2, 3]]
