"""Fixed precision and additive secret sharing, the client's side (PySyft 0.2's Parts 09 and 10).

`t.fix_precision()` is a `FixedPrecisionTensor`: round(t * 10**3) as int64, over a local tensor,
a pointer (computed where the data is) or a sharing. `t.share(bob, alice, crypto_provider=james)`
is an `AdditiveSharingTensor`: one pointer per holder to an int64 share, uniform on its own
(ring.py: Z/2^64, os.urandom), the shares summing to `t`. `+`, `-`, a public scalar's `*` and
`sum` run on each holder alone; `*` and `mm` are Beaver's protocol: the crypto provider makes a
triple and sends each holder its shares of it straight (MakeTriples -> StoreTriple, worker to
worker); the holders open x - a and y - b (one-time pads: uniform, they show nothing) to this
client, which sums them and sends them back to each holder to finish its share of the product.
`p.share(...)` on a pointer has its holder split the value and send the other shares on itself:
no value reaches this client. Comparisons follow PySyft 0.2.9's and CrypTen's idea of reducing
to the sign of x - y (`_sign` says how, and what it shows). A sharing dies as any pointer does:
its shares are freed on every holder, and a triple is freed as its product is made.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any, Sequence

import torch

from . import ring
from .errors import FedqError, TensorsNotCollocatedError, UnsupportedOperationError, ValueNeedsGetError
from .ids import new_id
from .messages import BeaverClose, BeaverOpen, GetObject, MakeTriples, ShareObject
from .pointer import Pointer, PointerTensor

if TYPE_CHECKING:
    from .pointer import Location

Number = (int, float)


def _meta(shape: Sequence[int]) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=ring.RING, device="meta")


# --------------------------------------------------------------------------- fixed precision


class FixedPrecisionTensor:
    """`child` (a tensor, a pointer, or a sharing) holds round(value * base**precision) as int64."""

    def __init__(self, child: Any, base: int = ring.BASE, precision_fractional: int = ring.PRECISION) -> None:
        self.child = child
        self.base, self.precision_fractional = int(base), int(precision_fractional)

    @property
    def scale(self) -> int:
        return self.base**self.precision_fractional

    @property
    def shape(self) -> torch.Size:
        return self.child.shape

    def size(self, *dim: int) -> Any:
        return self.shape if not dim else self.shape[dim[0]]

    def dim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"FixedPrecisionTensor>{self.child!r}"

    def _wrap(self, child: Any) -> "FixedPrecisionTensor":
        return FixedPrecisionTensor(child, self.base, self.precision_fractional)

    def _encoded(self, other: Any) -> Any:
        """`other` as this tensor's child would hold it."""
        if isinstance(other, FixedPrecisionTensor):
            if (other.base, other.precision_fractional) != (self.base, self.precision_fractional):
                raise ValueError("fixed-precision tensors of different bases or precisions do not mix: fix_precision() both alike")
            return other.child
        if isinstance(other, Number):
            return int(round(other * self.scale))
        if isinstance(other, torch.Tensor) and not isinstance(other, Pointer):
            return ring.encode(other, self.base, self.precision_fractional)
        raise TypeError(f"a FixedPrecisionTensor combines with another, a number or a local tensor, not {type(other).__name__}")

    def __add__(self, other: Any) -> "FixedPrecisionTensor":
        return self._wrap(self.child + self._encoded(other))

    __radd__ = __add__

    def __sub__(self, other: Any) -> "FixedPrecisionTensor":
        return self._wrap(self.child - self._encoded(other))

    def __rsub__(self, other: Any) -> "FixedPrecisionTensor":
        return self._wrap(self._encoded(other) - self.child)

    def __neg__(self) -> "FixedPrecisionTensor":
        return self._wrap(-self.child)

    def __mul__(self, other: Any) -> "FixedPrecisionTensor":
        if isinstance(other, int) and not isinstance(other, bool):
            return self._wrap(self.child * other)  # an integer scales exactly: nothing to truncate
        return self._wrap(_truncate(_times(self.child, self._encoded(other)), self.scale))

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> "FixedPrecisionTensor":
        if isinstance(other, int) and not isinstance(other, bool):
            return self._wrap(_truncate(self.child, other))
        if isinstance(other, float):
            return self * (1.0 / other)
        raise TypeError("a FixedPrecisionTensor is divided by a public number")

    def mm(self, other: Any) -> "FixedPrecisionTensor":
        child = self._encoded(other)
        product = self.child.mm(child) if not isinstance(self.child, torch.Tensor) or isinstance(self.child, Pointer) else torch.mm(self.child, child)
        return self._wrap(_truncate(product, self.scale))

    matmul = __matmul__ = mm

    def sum(self, *args: Any, **kwargs: Any) -> "FixedPrecisionTensor":
        return self._wrap(self.child.sum(*args, **kwargs))

    def mean(self, *args: Any, **kwargs: Any) -> "FixedPrecisionTensor":
        total = self.child.sum(*args, **kwargs)
        count = max(1, ring.numel(self.shape) // max(1, ring.numel(total.shape)))
        return self._wrap(_truncate(total, count))

    # comparisons give 0 or 1, in fixed precision (as PySyft's did): .float_precision() shows them
    def _compared(self, name: str, other: Any) -> "FixedPrecisionTensor":
        result = getattr(self.child, name)(self._encoded(other))
        return self._wrap(result * self.scale if isinstance(result, AdditiveSharingTensor) else result.long() * self.scale)

    def __gt__(self, other: Any) -> "FixedPrecisionTensor":
        return self._compared("__gt__", other)

    def __ge__(self, other: Any) -> "FixedPrecisionTensor":
        return self._compared("__ge__", other)

    def __lt__(self, other: Any) -> "FixedPrecisionTensor":
        return self._compared("__lt__", other)

    def __le__(self, other: Any) -> "FixedPrecisionTensor":
        return self._compared("__le__", other)

    def __eq__(self, other: Any) -> "FixedPrecisionTensor":  # type: ignore[override]
        return self._compared("__eq__", other)

    __hash__ = object.__hash__

    def max(self, dim: int | None = None) -> Any:
        if dim is None:
            return self._wrap(self.child.max())
        values, indices = self.child.max(dim=dim)
        return self._wrap(values), indices

    def argmax(self, dim: int | None = None) -> Any:
        return self.child.argmax(dim=dim)

    # ---- moving and decoding
    def float_precision(self) -> torch.Tensor:
        """Back to floats: a local tensor, or a pointer to one (decoded where the data is)."""
        child = self.child
        if isinstance(child, AdditiveSharingTensor):
            raise ValueNeedsGetError("a shared fixed-precision tensor is decoded after reconstruction: .get().float_precision()")
        if isinstance(child, Pointer):
            return child.to(torch.float64).div(self.scale).to(torch.get_default_dtype())
        return ring.decode(child, self.base, self.precision_fractional)

    float_prec = float_precision

    def get(self) -> "FixedPrecisionTensor":
        return self._wrap(self.child.get())

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "child":
            raise AttributeError(name)
        return getattr(self.child, name)  # (PySyft's chains answered what the child knows: .location, .shares)

    def send(self, worker: "Location") -> "FixedPrecisionTensor":
        return self._wrap(self.child.send(worker))

    def share(self, *workers: "Location", crypto_provider: "Location | None" = None, **_: Any) -> "FixedPrecisionTensor":
        return self._wrap(share(self.child, *workers, crypto_provider=crypto_provider, scale=self.scale))

    def copy(self) -> "FixedPrecisionTensor":
        return self._wrap(self.child.copy() if hasattr(self.child, "copy") else self.child.clone())


def _times(x: Any, y: Any) -> Any:
    return x * y


def _truncate(child: Any, divisor: int) -> Any:
    """`child` // divisor: rounded where the value is one (here or remote), by SecureML's local
    truncation on a sharing of two holders."""
    if divisor == 1:
        return child
    if isinstance(child, AdditiveSharingTensor):
        return child.truncate(divisor)
    if isinstance(child, Number):
        return int(round(child / divisor))
    return torch.floor_divide(child + divisor // 2, divisor)


def fix_precision(tensor: torch.Tensor, base: int = ring.BASE, precision_fractional: int = ring.PRECISION, **_: Any) -> FixedPrecisionTensor:
    """PySyft's `t.fix_precision()` (`fix_prec`): on a pointer, encoded on its worker."""
    if isinstance(tensor, Pointer):
        scale = base**precision_fractional
        if tensor.is_floating_point():  # (in place on the float64 copy: two fresh buffers there, not four)
            child = tensor.to(torch.float64, copy=True).mul_(scale).round_().to(ring.RING)
        else:
            child = tensor.to(ring.RING).mul(scale)
        return FixedPrecisionTensor(child, base, precision_fractional)
    return FixedPrecisionTensor(ring.encode(tensor, base, precision_fractional), base, precision_fractional)


# --------------------------------------------------------------------------- additive sharing


class AdditiveSharingTensor:
    """`[AdditiveSharingTensor]`: a pointer per holder to its int64 share; the sum is the value."""

    def __init__(self, shares: list[PointerTensor], crypto_provider: "Location | None" = None, *, held_remotely: bool = False) -> None:
        self.shares = shares
        self.crypto_provider = crypto_provider
        # Made by share() of a pointer: to PySyft a pointer to a sharing on the data's worker,
        # whose first .get() brings the sharing here (its pointers; no value moves).
        self.held_remotely = held_remotely

    @property
    def child(self) -> dict[str, PointerTensor]:
        """PySyft's: the shares by holder."""
        return {share.location.id: share for share in self.shares}

    @property
    def locations(self) -> list["Location"]:
        return [share.location for share in self.shares]

    @property
    def shape(self) -> torch.Size:
        return self.shares[0].shape

    @property
    def dtype(self) -> torch.dtype:
        return ring.RING

    def size(self, *dim: int) -> Any:
        return self.shape if not dim else self.shape[dim[0]]

    def dim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return "[AdditiveSharingTensor]" + "".join(f"\n\t-> {share!r}" for share in self.shares)

    def _client(self) -> Any:
        return self.shares[0].location.client

    def _like(self, shares: list[Any]) -> "AdditiveSharingTensor":
        return AdditiveSharingTensor(shares, self.crypto_provider)

    def _same_holders(self, other: "AdditiveSharingTensor") -> None:
        if [s.location.address for s in self.shares] != [s.location.address for s in other.shares]:
            raise TensorsNotCollocatedError(
                "these sharings have different holders ("
                + ", ".join(s.location.id for s in self.shares) + " / " + ", ".join(s.location.id for s in other.shares)
                + "): share both among the same workers, in the same order"
            )

    def _public(self, value: Any, at: int) -> Any:
        """A public value as holder `at` takes it: a number as is, a local tensor sent there."""
        if isinstance(value, Number):
            return value
        if isinstance(value, torch.Tensor) and not isinstance(value, Pointer):
            return value.to(ring.RING).send(self.shares[at].location)
        raise TypeError(f"a sharing combines with another sharing, a number or a local tensor, not {type(value).__name__}")

    # ---- linear: each holder alone
    def __add__(self, other: Any) -> "AdditiveSharingTensor":
        if isinstance(other, AdditiveSharingTensor):
            self._same_holders(other)
            return self._like([a + b for a, b in zip(self.shares, other.shares)])
        return self._like([self.shares[0] + self._public(other, 0), *self.shares[1:]])  # a public value: added once

    __radd__ = __add__

    def __sub__(self, other: Any) -> "AdditiveSharingTensor":
        if isinstance(other, AdditiveSharingTensor):
            self._same_holders(other)
            return self._like([a - b for a, b in zip(self.shares, other.shares)])
        return self._like([self.shares[0] - self._public(other, 0), *self.shares[1:]])

    def __rsub__(self, other: Any) -> "AdditiveSharingTensor":
        return (-self) + other

    def __neg__(self) -> "AdditiveSharingTensor":
        return self._like([-share for share in self.shares])

    def __mul__(self, other: Any) -> "AdditiveSharingTensor":
        if isinstance(other, AdditiveSharingTensor):
            return _beaver("mul", self, other)
        if isinstance(other, float):
            raise TypeError("a sharing of integers is multiplied by an integer: fix_precision() both for fractions")
        return self._like([share * self._public(other, i) for i, share in enumerate(self.shares)])

    __rmul__ = __mul__

    def mm(self, other: Any) -> "AdditiveSharingTensor":
        if isinstance(other, AdditiveSharingTensor):
            return _beaver("matmul", self, other)
        return self._like([share.mm(self._public(other, i)) for i, share in enumerate(self.shares)])

    matmul = __matmul__ = mm

    def sum(self, *args: Any, **kwargs: Any) -> "AdditiveSharingTensor":
        return self._like([share.sum(*args, **kwargs) for share in self.shares])

    def __getitem__(self, index: Any) -> "AdditiveSharingTensor":
        return self._like([share[index] for share in self.shares])

    def reshape(self, *shape: Any) -> "AdditiveSharingTensor":
        return self._like([share.reshape(*shape) for share in self.shares])

    view = reshape

    def narrow(self, dim: int, start: int, length: int) -> "AdditiveSharingTensor":
        return self._like([share.narrow(dim, start, length) for share in self.shares])

    def squeeze(self, dim: int) -> "AdditiveSharingTensor":
        return self._like([share.squeeze(dim) for share in self.shares])

    def truncate(self, divisor: int) -> "AdditiveSharingTensor":
        """value // divisor: SecureML's local truncation, each of two holders alone (off by at most
        one unit, wrong with probability ~|value| / 2^63). With more holders, the second one first
        gathers the others' shares (moved worker to worker) into one, the two truncate, and the
        second splits its result among them again: for that moment the second holder holds
        value - (the first's share), so the first two together could reconstruct it (n - 1
        colluding holders are needed otherwise). Shares of private data do not move: refused."""
        if len(self.shares) < 2:
            raise UnsupportedOperationError("truncating a sharing takes at least two holders")
        first, second, *others = self.shares
        for share in others:
            second = second + share.copy().move(second.location)
        truncated = [first // divisor, -((-second) // divisor)]
        if not others:
            return self._like(truncated)
        spread = share_many([truncated[1]], [share.location for share in self.shares[1:]], crypto_provider=self.crypto_provider)[0]
        return self._like([truncated[0], *spread.shares])

    # ---- comparisons and max: `_nonnegative` (a sharing of 0 or 1; values are integers)
    def __gt__(self, other: Any) -> "AdditiveSharingTensor":
        return _nonnegative(self - other - 1)

    def __lt__(self, other: Any) -> "AdditiveSharingTensor":
        return _nonnegative(-(self - other) - 1)

    def __ge__(self, other: Any) -> "AdditiveSharingTensor":
        return _nonnegative(self - other)

    def __le__(self, other: Any) -> "AdditiveSharingTensor":
        return _nonnegative(-(self - other))

    def __eq__(self, other: Any) -> "AdditiveSharingTensor":  # type: ignore[override]
        difference = self - other
        return _nonnegative(difference) + _nonnegative(-difference) - 1

    __hash__ = object.__hash__

    def max(self, dim: int | None = None) -> Any:
        """The largest value (a sharing), or with `dim` (values, indices) along it: a tournament of
        comparisons, each half against the other (log2(n) rounds)."""
        if dim is None:
            return _tournament(self.reshape(-1), 0)[0]
        values, indices = _tournament(self, dim)
        return values, indices

    def argmax(self, dim: int | None = None) -> "AdditiveSharingTensor":
        if dim is None:
            return _tournament(self.reshape(-1), 0)[1]
        return _tournament(self, dim)[1]

    # ---- reconstruction
    def get(self) -> torch.Tensor:
        """The value: every holder's share, summed here (in one round trip). A sharing that
        share() of a pointer made comes here first, as PySyft's pointer to it did."""
        if self.held_remotely:
            return AdditiveSharingTensor(self.shares, self.crypto_provider)
        for share in self.shares:
            share._check_usable()
        try:
            values = self._client().request_many([(s.location.address, GetObject(s.id_at_location)) for s in self.shares])
        except FedqError as error:
            # (without request_many's frames, which hold the error: a cycle that kept the shares
            # alive, on their holders too, until the collector ran)
            raise error.with_traceback(None)
        for share in self.shares:
            share._spend("its sharing was reconstructed with .get()")
        return ring.reconstruct(values)

    def share(self, *workers: Any, **kwargs: Any) -> "AdditiveSharingTensor":
        raise ValueError("this is a sharing already")

    def fix_precision(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("fix_precision() comes before share(): t.fix_precision().share(bob, alice)")

    fix_prec = fix_precision


def share(value: Any, *workers: "Location", crypto_provider: "Location | None" = None, scale: int = 1, **_: Any) -> AdditiveSharingTensor:
    """PySyft's `t.share(bob, alice, crypto_provider=james)`: a local tensor is split here (os.urandom)
    and each share sent to its holder; a pointer's holder splits it and sends the shares on.
    `scale`: what one unit of the value is worth (a fixed-precision tensor's), for an owner's noise."""
    if len(workers) < 1:
        raise ValueError("share(...) names the workers that hold the shares: t.share(bob, alice)")
    if len({w.address for w in workers}) != len(workers):
        raise ValueError("each share goes to a different worker")
    if crypto_provider is not None and any(w.address == crypto_provider.address for w in workers):
        raise ValueError("the crypto provider holds no share: it would know the pads of its own triples")
    if isinstance(value, Pointer):
        return share_many([value], workers, crypto_provider=crypto_provider, scale=scale)[0]
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"share() takes a tensor, not {type(value).__name__}")
    if value.is_floating_point():
        raise TypeError("only integers are shared (the ring Z/2^64): t.fix_precision().share(...) for fractions")
    parts = ring.split(value.detach().to(ring.RING), len(workers))
    return AdditiveSharingTensor([part.send(worker) for part, worker in zip(parts, workers)], crypto_provider)


def share_many(pointers: Sequence[Pointer], workers: Sequence["Location"], crypto_provider: Any = None, scale: int = 1) -> list[AdditiveSharingTensor]:
    """`p.share(*workers)` for each pointer, sent at once and waited for once (a federated round
    shares every owner's update in one round trip, not one per owner). `scale` as share()'s."""
    requests, sharings = [], []
    for pointer in pointers:
        pointer._check_usable()
        if pointer.dtype != ring.RING:
            raise TypeError("only int64 tensors are shared (the ring Z/2^64): p.fix_precision().share(...) for fractions, p.long() for integers")
        ids = [new_id() for _ in workers]
        # The pointers first (rule 1): a failure from here on frees whatever was stored.
        shares = [PointerTensor._make(_meta(pointer.shape), worker, new_id(), id, is_chain=False) for worker, id in zip(workers, ids)]
        parties = tuple((w.id, w.address, w.incarnation, id) for w, id in zip(workers, ids))
        requests.append((pointer.location.address, ShareObject(pointer.id_at_location, parties, secrets.token_hex(16), scale)))
        sharings.append(AdditiveSharingTensor(shares, crypto_provider, held_remotely=True))
    if any(p._is_chain for p in pointers):
        pointers[0].location.client.barrier()  # (a chain's last hop must have made the object)
    # Waited for: the other holders must hold their shares before our next op there.
    pointers[0].location.client.request_many(requests)
    return sharings


def _beaver(kind: str, x: AdditiveSharingTensor, y: AdditiveSharingTensor) -> AdditiveSharingTensor:
    """x * y or x @ y by Beaver's protocol (see the module's docstring)."""
    x._same_holders(y)
    provider = x.crypto_provider or y.crypto_provider
    if provider is None:
        raise ValueError("multiplying two sharings needs a crypto provider: .share(bob, alice, crypto_provider=james)")
    out = _meta(ring.product_shape(kind, x.shape, y.shape))
    client = x._client()
    holders = x.locations
    ids = [(new_id(), new_id(), new_id()) for _ in holders]
    pads = [
        [PointerTensor._make(_meta(shape), holder, new_id(), id, is_chain=False) for id, shape in zip(triple, (x.shape, y.shape, out.shape))]
        for holder, triple in zip(holders, ids)
    ]
    client.request(provider.address, MakeTriples(kind, tuple(x.shape), tuple(y.shape), tuple(
        (h.id, h.address, h.incarnation, triple) for h, triple in zip(holders, ids))))
    opened = client.request_many([
        (h.address, BeaverOpen(kind, xs.id_at_location, ys.id_at_location, triple))
        for h, xs, ys, triple in zip(holders, x.shares, y.shares, ids)
    ])
    e, f = ring.reconstruct([o[0] for o in opened]), ring.reconstruct([o[1] for o in opened])
    results = []
    for i, (holder, triple) in enumerate(zip(holders, ids)):
        result_id = new_id()
        results.append(PointerTensor._make(_meta(out.shape), holder, new_id(), result_id, is_chain=False))
        client.submit(holder.address, BeaverClose(kind, result_id, e, f, triple, i == 0))
        for pad in pads[i]:
            pad._spend("its triple was used")  # (BeaverClose frees it)
    return AdditiveSharingTensor(results, provider)


def _nonnegative(d: AdditiveSharingTensor) -> AdditiveSharingTensor:
    """[d >= 0], elementwise, as a sharing of 0 or 1: a sign test by a dealer's blinded opening.

    The crypto provider deals per element (ring.comparison_pads) a one-time pad a, m = s * r,
    c = a * m, w = s * r' and sigma = [s < 0], with a random sign s, a large random r (2^10 to
    2^38, log-uniform) and 0 < r' < r; each holder gets shares only. The holders open e = d - a
    (uniform) to this client, then their shares of t = e * m + c + w = s * (r * d + r'); t's sign
    is s times d's (r' < r: d = 0 counts as >= 0), so [d >= 0] = [t > 0] xor sigma, which the
    holders compute from their shares of sigma and the public bit. PySyft 0.2.9 used SecureNN's
    private compare and CrypTen a binary circuit (A2B), both exact and leaking nothing; this is
    simpler and cheaper (four round trips, one dealer message), and leaks this: the holders and
    the provider learn nothing of d, the client learns [t > 0], a coin flip, and |t| = r * |d| + r',
    so the magnitude of d to within r's spread (~28 bits of a 64-bit ring: whether |d| is 1 or
    2^20 shows; its sign never). It is exact for |d| < ring.MAX_COMPARED (2^25: 33,554 in fixed
    precision) and wrong beyond. For shares of public data only: products of private shares
    are refused (BeaverOpen), so an owner's private value is never blinded-and-opened."""
    provider = d.crypto_provider
    if provider is None:
        raise ValueError("comparing sharings needs a crypto provider: .share(bob, alice, crypto_provider=james)")
    client, holders, shape = d._client(), d.locations, tuple(d.shape)
    ids = [tuple(new_id() for _ in range(5)) for _ in holders]
    pads = [[PointerTensor._make(_meta(shape), holder, new_id(), id, is_chain=False) for id in five] for holder, five in zip(holders, ids)]
    client.request(provider.address, MakeTriples("compare", shape, shape, tuple((h.id, h.address, h.incarnation, five) for h, five in zip(holders, ids))))
    opened = client.request_many([(h.address, BeaverOpen("compare", ds.id_at_location, ds.id_at_location, five)) for h, ds, five in zip(holders, d.shares, ids)])
    e = ring.reconstruct([o[0] for o in opened])
    sigma_ids = [new_id() for _ in holders]
    sigma = [PointerTensor._make(_meta(shape), h, new_id(), id, is_chain=False) for h, id in zip(holders, sigma_ids)]
    blinded = client.request_many([(h.address, BeaverClose("compare", id, e, e, five, i == 0)) for i, (h, id, five) in enumerate(zip(holders, sigma_ids, ids))])
    for pad in (p for five in pads for p in five):
        pad._spend("its comparison was made")  # (BeaverClose frees it)
    positive = (ring.reconstruct(blinded) > 0).to(ring.RING)
    return AdditiveSharingTensor(sigma, provider) * (1 - 2 * positive) + positive


def _tournament(values: AdditiveSharingTensor, dim: int) -> tuple[AdditiveSharingTensor, Any]:
    """(max, argmax) along `dim`: each round compares the first half with the second, element by
    element, and keeps the larger (the first on a tie: torch's first maximal index), log2(n) rounds."""
    dim = dim % max(1, values.dim())
    count = values.shape[dim]
    if count == 0:
        raise ValueError("max of an empty sharing")
    view = [1] * values.dim()
    view[dim] = count
    indices: Any = torch.arange(count, dtype=ring.RING).reshape(view).expand(tuple(values.shape)).contiguous()
    while count > 1:
        half = count // 2
        a, b = values.narrow(dim, 0, half), values.narrow(dim, half, half)
        ia, ib = indices.narrow(dim, 0, half), indices.narrow(dim, half, half)
        keep_a = _nonnegative(a - b)
        new_values, new_indices = b + keep_a * (a - b), ib + keep_a * (ia - ib)
        if count % 2:  # the odd one out goes on to the next round
            new_values = _cat(new_values, values.narrow(dim, count - 1, 1), dim)
            new_indices = _cat(new_indices, indices.narrow(dim, count - 1, 1), dim)
        values, indices, count = new_values, new_indices, half + count % 2
    return values.squeeze(dim), indices.squeeze(dim)


def _cat(first: Any, second: Any, dim: int) -> Any:
    if isinstance(first, AdditiveSharingTensor) and isinstance(second, AdditiveSharingTensor):
        return first._like([torch.cat([p, q], dim) for p, q in zip(first.shares, second.shares)])
    if isinstance(first, AdditiveSharingTensor):  # (public indices: the odd one's, shared as a public value)
        zeros = [second] + [torch.zeros_like(second)] * (len(first.shares) - 1)
        return first._like([torch.cat([p, z.send(p.location)], dim) for p, z in zip(first.shares, zeros)])
    return torch.cat([first, second], dim)
