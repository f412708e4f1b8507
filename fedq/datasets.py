"""Federated datasets: PySyft 0.2's `BaseDataset`, `FederatedDataset` and `FederatedDataLoader`.

A federated dataset is a dataset split across workers, each part stored on the worker that
trains on it. The loader never holds training data: it cuts each batch where the part is,
with an index op on the part's pointers (rule 4): a slice `data[i:j]`, or for `shuffle` a
permutation sent once per worker and pass, sliced and indexed there. So every batch runs
through the worker's own privacy rule (privacy.py) like any other op, and what reaches this
process is a pair of pointers whose `.location` is the worker to train on (Part 06's
`model.send(data.location)`).

Imports pointer.py and nothing above it; handle.py and the client never import this module.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .errors import BatchSizeError, DatasetAlreadySentError, DatasetMismatchError, DatasetNotSentError
from .pointer import Location, Pointer, send_tensor

log = logging.getLogger("fedq.datasets")


def _place(tensor: Any) -> str | None:
    """Where `tensor` lives: its worker's address, None for here."""
    return tensor.location.address if isinstance(tensor, Pointer) else None


def _place_name(tensor: Any) -> str:
    return repr(tensor.location.id) if isinstance(tensor, Pointer) else "here"


class BaseDataset(Dataset):
    """PySyft's `sy.BaseDataset(data, targets, transform=None)`: inputs and their labels as one
    dataset, here or (after `.send(worker)`) on a worker. Item i is `(data[i], targets[i])`,
    with `transform` applied to the data; on a worker that is an op there, so `transform` must
    be made of torch operations (`lambda x: x / 255`), which run where the data is."""

    def __init__(self, data: Any, targets: Any, transform: Callable[[Any], Any] | None = None) -> None:
        if len(data) != len(targets):
            raise DatasetMismatchError(f"a dataset needs one target per data point: {len(data)} data points, {len(targets)} targets")
        if _place(data) != _place(targets):
            raise DatasetMismatchError(f"a dataset's data and targets must be in one place: data {_place_name(data)}, targets {_place_name(targets)}")
        self.data = data
        self.targets = targets
        self.transform_ = transform
        self.federated = False  # (PySyft's flag: set when a FederatedDataset holds this part)

    def __len__(self) -> int:
        return len(self.data)  # (a pointer's length is answered from its shape: no round trip)

    def __getitem__(self, index: Any) -> tuple[Any, Any]:
        """`(data, targets)` at `index` (an int, a slice, or a tensor of indices; a pointer to
        one for a dataset on a worker): on a worker, both are cut there."""
        data = self.data[index]
        if self.transform_ is not None:
            data = self.transform_(data)
        return data, self.targets[index]

    @property
    def location(self) -> Location | None:
        """The worker holding this dataset (None while it is here)."""
        return self.data.location if isinstance(self.data, Pointer) else None

    def transform(self, transform: Callable[[Any], Any]) -> None:
        """Apply `transform` to all of the data now (on its worker, op by op, once it is there)."""
        self.data = transform(self.data)

    def send(self, worker: Location) -> "BaseDataset":
        """Store the data and targets on `worker`, in place (like `model.send`): this dataset's
        `data` and `targets` become pointers. Returns the dataset."""
        where = self.location
        if where is not None:
            raise DatasetAlreadySentError(
                f"this dataset is already on {where.id!r}: send() moves it, in place, like model.send(); "
                "to put data on several workers, make a BaseDataset for each or use dataset.federate(workers)"
            )
        for name in ("data", "targets"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise TypeError(f"only a dataset of tensors can be sent; its {name} is a {type(getattr(self, name)).__name__}")
        self.data = send_tensor(self.data, worker)
        self.targets = send_tensor(self.targets, worker)
        return self

    def get(self) -> "BaseDataset":
        """Bring the data and targets back here, in place (rule 5). Returns the dataset."""
        if isinstance(self.data, Pointer):
            self.data = self.data.get()
        if isinstance(self.targets, Pointer):
            self.targets = self.targets.get()
        self.federated = False
        return self

    def get_data(self) -> Any:
        return self.data

    def get_targets(self) -> Any:
        return self.targets

    def federate(self, *workers: Any) -> "FederatedDataset":
        """Split this dataset into `len(workers)` parts, one sent to each worker (see `federate`)."""
        return federate(self, *workers)

    def __repr__(self) -> str:
        return f"BaseDataset\n\tData: {self.data!r}\n\ttargets: {self.targets!r}"


def federate(dataset: Dataset, *workers: Any) -> "FederatedDataset":
    """PySyft's `dataset.federate((bob, alice))`, installed on `torch.utils.data.Dataset` by the
    hook: `dataset` split in order into `len(workers)` parts of ceil(len / len(workers)) items,
    part i sent to `workers[i]`, as one FederatedDataset. Each part is sent once, as two tensors."""
    if len(workers) == 1 and isinstance(workers[0], (list, tuple)):
        workers = tuple(workers[0])  # (PySyft's own spelling: federate((bob, alice)))
    if not workers:
        raise ValueError("federate() needs the workers to split the dataset across: dataset.federate((bob, alice))")
    if isinstance(dataset, BaseDataset) and dataset.location is not None:
        raise DatasetAlreadySentError(f"this dataset is already on {dataset.location.id!r}: .get() it first to federate it")
    data, targets = _as_tensors(dataset)
    size = max(1, math.ceil(len(data) / len(workers)))  # (an empty dataset: no parts)
    parts = []
    for worker, start in zip(workers, range(0, len(data), size)):
        # (a clone: a slice would be a view, and what is sent is its values alone)
        parts.append(BaseDataset(send_tensor(data[start:start + size].clone(), worker), send_tensor(targets[start:start + size].clone(), worker)))
    return FederatedDataset(parts)


def _as_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All of `dataset` as (data, targets) tensors, its items stacked as torch's DataLoader does."""
    if isinstance(dataset, BaseDataset) and dataset.transform_ is None and isinstance(dataset.data, torch.Tensor) and isinstance(dataset.targets, torch.Tensor):
        return dataset.data, dataset.targets
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    batch = next(iter(DataLoader(dataset, batch_size=max(len(dataset), 1))))  # (items through __getitem__: transforms applied)
    if not (isinstance(batch, (list, tuple)) and len(batch) == 2):
        raise TypeError(f"federate() needs a dataset of (data, target) items; {type(dataset).__name__}'s items are not pairs")
    return batch[0], batch[1]


class FederatedDataset:
    """PySyft's `sy.FederatedDataset([dataset, ...])`: datasets already on their workers, one per
    worker, by worker id (`fd["bob"]`); the input of a FederatedDataLoader."""

    def __init__(self, datasets: Iterable[BaseDataset]) -> None:
        self.datasets: dict[str, BaseDataset] = {}
        for dataset in datasets:
            where = dataset.location
            if where is None:
                raise DatasetNotSentError("every part of a FederatedDataset must be on its worker: .send(worker) it first, or use dataset.federate(workers)")
            if where.id in self.datasets:
                raise DatasetAlreadySentError(f"two parts of this FederatedDataset are on {where.id!r}: one part per worker")
            self.datasets[where.id] = dataset
            dataset.federated = True

    @property
    def workers(self) -> list[str]:
        """The ids of the workers holding a part, in order."""
        return list(self.datasets)

    locations = workers

    def __getitem__(self, worker: Any) -> BaseDataset:
        """The part on `worker` (its id, or its handle)."""
        return self.datasets[getattr(worker, "id", worker)]

    def __len__(self) -> int:
        return sum(len(dataset) for dataset in self.datasets.values())

    def get_dataset(self, worker: Any) -> BaseDataset:
        """Bring the part on `worker` back here and drop it from this federated dataset."""
        id = getattr(worker, "id", worker)
        dataset = self.datasets[id].get()  # (first: a refused get leaves the part here)
        del self.datasets[id]
        return dataset

    def __repr__(self) -> str:
        return f"FederatedDataset\n    Distributed across: {', '.join(self.workers)}\n    Number of datapoints: {len(self)}\n"


class FederatedDataLoader:
    """PySyft's `sy.FederatedDataLoader(federated_dataset, batch_size=8, shuffle=False, ...)`.

    Iterating yields `(data, target)` pointer batches worker by worker: every batch of the first
    worker's part, then the next worker's. `shuffle` shuffles each part's order anew every pass
    (drawn here from torch's generator, so `torch.manual_seed` repeats it). With
    `num_iterators=k` (k < the number of workers) each step gives a batch of k distinct workers,
    `{location: (data, target)}`, a worker whose part ran out giving way to one not used yet;
    `iter_per_worker=True` gives one batch of every worker a step. `len()` is the number of steps."""

    def __init__(
        self,
        federated_dataset: FederatedDataset,
        batch_size: int = 8,
        shuffle: bool = False,
        num_iterators: int = 1,
        drop_last: bool = False,
        iter_per_worker: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs:  # (PySyft's answer to DataLoader options about local processes: num_workers, pin_memory)
            log.warning("The following options are not supported: %s", ", ".join(f"{k}: {v}" for k, v in kwargs.items()))
        if not isinstance(federated_dataset, FederatedDataset):
            raise TypeError(f"a FederatedDataLoader loads a FederatedDataset (dataset.federate(workers)), not a {type(federated_dataset).__name__}; "
                            "for a dataset here use torch.utils.data.DataLoader")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise BatchSizeError(f"batch_size must be a positive integer, not {batch_size!r}")
        if isinstance(num_iterators, bool) or not isinstance(num_iterators, int) or num_iterators <= 0:
            raise ValueError(f"num_iterators must be a positive integer, not {num_iterators!r}")
        self.federated_dataset = federated_dataset
        self.workers = federated_dataset.workers
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.iter_per_worker = iter_per_worker
        if iter_per_worker:
            self.num_iterators = len(self.workers)
        else:  # (PySyft's bound: one worker stays free for an iterator to move on to)
            self.num_iterators = 1 if len(self.workers) <= 1 else min(num_iterators, len(self.workers) - 1)

    def _starts(self, worker: str) -> range:
        n = len(self.federated_dataset[worker])
        return range(0, n - self.batch_size + 1 if self.drop_last else n, self.batch_size)

    def _batches(self, worker: str) -> Iterator[tuple[Any, Any]]:
        """The part on `worker`, batch by batch, each cut on the worker."""
        part = self.federated_dataset[worker]
        starts = self._starts(worker)
        if not starts:
            return
        # One message per worker and pass: the order, drawn here, indexed there.
        order = torch.randperm(len(part)) if self.shuffle else None
        if order is not None and isinstance(part.data, Pointer) and part.data._is_chain:
            # (a part behind a chain: the order is made where its data is, by an op relayed there)
            order = part.data.new_tensor(order.tolist(), dtype=torch.long)
        elif order is not None:
            order = send_tensor(order, part.location)
        for start in starts:
            stop = start + self.batch_size
            yield part[order[start:stop] if order is not None else slice(start, stop)]

    def __iter__(self) -> Iterator[Any]:
        if self.num_iterators == 1 and not self.iter_per_worker:
            for worker in self.workers:
                yield from self._batches(worker)
            return
        for step in _steps({w: self._batches(w) for w in self.workers}, self.num_iterators, self.iter_per_worker):
            yield {data.location: (data, target) for data, target in step}

    def __len__(self) -> int:
        if self.num_iterators == 1 and not self.iter_per_worker:
            return sum(len(self._starts(w)) for w in self.workers)
        return sum(1 for _ in _steps({w: iter(self._starts(w)) for w in self.workers}, self.num_iterators, self.iter_per_worker))


def _steps(batches: dict[str, Iterator[Any]], k: int, fixed: bool) -> Iterator[list[Any]]:
    """One item of each of `k` workers' iterators a step. `fixed`: the first k workers, until one
    runs out. Else a worker that runs out gives way to the next one not used yet; the steps end
    when none is left to take its place (PySyft's schedule)."""
    waiting = list(batches)
    current = waiting[:k]
    del waiting[:k]
    while True:
        step = []
        for i, worker in enumerate(current):
            while True:
                item = next(batches[worker], _DONE)
                if item is not _DONE:
                    break
                if fixed or not waiting:
                    return
                worker = current[i] = waiting.pop(0)
            step.append(item)
        yield step


_DONE = object()
