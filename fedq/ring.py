"""The ring secret sharing computes in: int64 with wrap-around (Z/2^64, as PySyft 0.2 used),
and fixed-precision encoding into it. Pure tensor math, used by the client (sharing.py) and
by the workers (worker.py's sharing handlers): no I/O, no fedq imports.

Randomness comes from the operating system's CSPRNG (`os.urandom`), or AES-CTR under a seed
drawn from it (`expand`), never from torch's global generator: that one is process-wide state
another client's ops could read or reseed.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.ciphers.modes import CTR

RING = torch.int64
BASE, PRECISION = 10, 3  # PySyft 0.2's defaults: x is stored as round(x * 10**3)


def numel(shape: Sequence[int] | torch.Size) -> int:
    """How many elements a tensor of `shape` has."""
    count = 1
    for size in shape:
        count *= int(size)
    return count


def random_ring(shape: Sequence[int] | torch.Size) -> torch.Tensor:
    """Uniform elements of Z/2^64, shaped `shape`, from os.urandom."""
    count = numel(shape)
    if count == 0:
        return torch.zeros(tuple(shape), dtype=RING)
    return torch.frombuffer(bytearray(os.urandom(8 * count)), dtype=RING).reshape(tuple(shape))


SEED_BYTES = 32


#: AES-CTR's input: zeros, a chunk at a time (read again for every chunk, never allocated anew:
#: fresh memory costs a page fault every 4 KiB, which on some machines outweighs the AES itself)
_ZEROS = bytes(1 << 20)
_SLACK = 2  # int64 elements after a keystream's end: update_into wants a block's slack


def expand(seed: bytes, shape: Sequence[int] | torch.Size, out: torch.Tensor | None = None) -> torch.Tensor:
    """A uniform ring tensor from a 32-byte seed: AES-256-CTR's keystream under the seed (a
    CSPRNG: indistinguishable from os.urandom's without the seed). A holder sends another its
    share as a seed, 32 bytes instead of 8 per element; the receiver expands it. `out`: a
    scratch tensor from `scratch(shape)` to write into (reused, its pages already mapped)."""
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ValueError(f"a share's seed is {SEED_BYTES} bytes")
    count = numel(shape)
    if count == 0:
        return torch.zeros(tuple(shape), dtype=RING)
    buffer = out if out is not None else torch.empty(count + _SLACK, dtype=RING)
    if buffer.dtype != RING or not buffer.is_contiguous() or buffer.numel() < count + _SLACK:
        raise ValueError("expand's out is a contiguous int64 tensor of the shape's elements and its slack: ring.scratch(shape)")
    # The keystream written straight into the tensor; the key is used once: a zero nonce.
    stream = Cipher(AES(seed), CTR(bytes(16))).encryptor()
    target = memoryview(buffer.numpy()).cast("B")
    total = 8 * count
    for start in range(0, total, len(_ZEROS)):
        size = min(len(_ZEROS), total - start)
        stream.update_into(memoryview(_ZEROS)[:size], target[start:start + size + 8 * _SLACK])
    return buffer[:count].reshape(tuple(shape))


def scratch(shape: Sequence[int] | torch.Size) -> torch.Tensor:
    """A tensor `expand(..., out=)` writes into, for several seeds of one shape."""
    return torch.empty(numel(shape) + _SLACK, dtype=RING)


def split_seeded(secret: torch.Tensor, seeds: Sequence[bytes]) -> torch.Tensor:
    """The share that, with the expanded `seeds`, sums to `secret` (what the splitter keeps)."""
    if secret.dtype != RING:
        raise TypeError(f"shares are {RING} (the ring Z/2^64); got {secret.dtype}: fix_precision() a float tensor first")
    if secret.is_meta:
        return torch.empty_like(secret)
    own = secret.clone()
    reused = scratch(secret.shape) if len(seeds) > 1 else None  # (one buffer for every seed)
    for seed in seeds:
        own -= expand(seed, secret.shape, out=reused)
    return own


def split(secret: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """`parts` additive shares of `secret` (an int64 tensor): each uniform on its own, their sum
    (wrapping) the secret. On a meta tensor (privacy.py's shape check) meta shares."""
    if parts < 1:
        raise ValueError("a secret is split into at least one share")
    if secret.dtype != RING:
        raise TypeError(f"shares are {RING} (the ring Z/2^64); got {secret.dtype}: fix_precision() a float tensor first")
    if secret.is_meta:
        return [torch.empty_like(secret) for _ in range(parts)]
    shares = [random_ring(secret.shape) for _ in range(parts - 1)]
    last = secret.clone()
    for share in shares:
        last -= share  # (int64 wraps: the ring's subtraction)
    return [*shares, last]


def reconstruct(shares: Sequence[torch.Tensor]) -> torch.Tensor:
    total = shares[0].clone()
    for share in shares[1:]:
        total += share
    return total


def encode(value: torch.Tensor, base: int = BASE, precision: int = PRECISION) -> torch.Tensor:
    """Fixed precision: round(value * base**precision) as int64 (an integer tensor is scaled exactly)."""
    scale = base**precision
    if value.is_floating_point():
        return (value.to(torch.float64) * scale).round().to(RING)
    return value.to(RING) * scale


def decode(value: torch.Tensor, base: int = BASE, precision: int = PRECISION) -> torch.Tensor:
    return value.to(torch.float64).div(base**precision).to(torch.get_default_dtype())


def truncate_share(share: torch.Tensor, divisor: int, first: bool) -> torch.Tensor:
    """One of TWO holders' share of x // divisor, without talking (SecureML's local truncation,
    Mohassel & Zhang 2017): holder 0 floors its share, holder 1 floors the negation of its own.
    Right to within 1 unless |x| >= 2^63 / 2^20-ish (probability ~|x| / 2^63 per element)."""
    if first:
        return torch.floor_divide(share, divisor)
    return torch.floor_divide(share.neg(), divisor).neg()


def triple(kind: str, x_shape: Sequence[int], y_shape: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """A Beaver triple (a, b, c = a * b or a @ b) of uniform ring elements; for "compare",
    `comparison_pads` of x's shape."""
    if kind == "compare":
        return comparison_pads(x_shape)
    a, b = random_ring(x_shape), random_ring(y_shape)
    return a, b, combine(kind, a, b)


def product_shape(kind: str, x_shape: Sequence[int], y_shape: Sequence[int]) -> tuple[int, ...]:
    """The shape of x * y or x @ y, worked out without tensors (a worker's first meta op costs ~1 s)."""
    x_shape, y_shape = tuple(x_shape), tuple(y_shape)
    if kind == "compare":
        return x_shape
    if kind == "mul":
        return _broadcast(x_shape, y_shape)
    if kind != "matmul":
        raise ValueError(f"a Beaver triple is for 'mul' or 'matmul', not {kind!r}")
    if len(x_shape) == 2 and len(y_shape) == 2 and x_shape[1] == y_shape[0]:
        return (x_shape[0], y_shape[1])
    if len(x_shape) == 0 or len(y_shape) == 0:
        raise ValueError("both arguments to matmul need to be at least 1D")
    meta = lambda shape: torch.empty(shape, dtype=RING, device="meta")  # (batched and 1-D forms: torch's rules)
    return tuple(torch.matmul(meta(x_shape), meta(y_shape)).shape)


def _broadcast(x: tuple[int, ...], y: tuple[int, ...]) -> tuple[int, ...]:
    """torch's broadcasting of two shapes (its own broadcast_shapes imports ~1 s of torch at first use)."""
    out = []
    for i in range(1, max(len(x), len(y)) + 1):
        a, b = (x[-i] if i <= len(x) else 1), (y[-i] if i <= len(y) else 1)
        if a != b and 1 not in (a, b):
            raise ValueError(f"shapes {x} and {y} do not broadcast")
        out.append(max(a, b) if 0 not in (a, b) else 0)
    return tuple(reversed(out))


#: the dealer's blinding factor r is 2^e + (0 .. 2^e) for e uniform in this range: what the client
#: sees of |x - y| is r * |x - y|, so the values compared must keep |x - y| * 2^(MAX + 1) < 2^63
BLIND_BITS = (10, 37)
MAX_COMPARED = 2 ** (62 - BLIND_BITS[1])  # |x - y| below this compares right (2^25: 33,554 in fixed precision)


def comparison_pads(shape: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """A dealer's material for one sign test of d (per element): a (uniform), m = s * r,
    c = a * m, w = s * r' and sigma = [s < 0], with s = +-1, r large and random, 0 < r' < r.
    Opening t = m * d + w = s * (r * d + r') shows only a random sign and a blinded magnitude;
    [d >= 0] = [t > 0] xor sigma."""
    shape = tuple(shape)
    raw = random_ring((4, *shape))
    sign = torch.where(raw[0] & 1 == 1, 1, -1).to(RING)
    span = BLIND_BITS[1] - BLIND_BITS[0] + 1
    exponent = BLIND_BITS[0] + (raw[1] & 0x7FFFFFFF) % span
    r = (1 << exponent) + (raw[2] & ((1 << exponent) - 1))
    r_small = 1 + (raw[3] & 0x7FFFFFFFFFFFFFFF) % (r - 1)
    a = random_ring(shape)
    m = sign * r
    return a, m, a * m, sign * r_small, (sign < 0).to(RING)


def combine(kind: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "mul":
        return x * y
    if kind == "matmul":
        return matmul(x, y)
    raise ValueError(f"a Beaver triple is for 'mul' or 'matmul', not {kind!r}")


_LIMB = 16  # bits: a product of two limbs summed over 2^21 terms stays exact in float64 (2^53)


def matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x @ y in Z/2^64. torch's int64 matmul has no BLAS (1000 x 1000: ~3.7 s here); split into
    four 16-bit limbs each, the ten limb products that reach below 2^64 are exact float64 BLAS
    matmuls (~20x faster), shifted and summed with wrap-around."""
    inner = x.shape[-1] if x.dim() else 0
    if x.is_meta or y.is_meta or inner >= 1 << 21 or x.numel() * y.numel() < 1 << 16:
        return torch.matmul(x, y)
    mask = (1 << _LIMB) - 1
    xs = [((x >> (_LIMB * i)) & mask).to(torch.float64) for i in range(4)]
    ys = [((y >> (_LIMB * j)) & mask).to(torch.float64) for j in range(4)]
    total = None
    for i in range(4):
        for j in range(4 - i):
            term = torch.matmul(xs[i], ys[j]).to(RING) << (_LIMB * (i + j))
            total = term if total is None else total + term
    return total


def beaver_close(kind: str, e: torch.Tensor, f: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, first: bool) -> torch.Tensor:
    """A holder's share of x * y from its triple shares and the opened e = x - a, f = y - b:
    z_i = c_i + e * b_i + a_i * f (+ e * f for one holder)."""
    if first:  # (e b + e f as one product: one matmul fewer)
        return c + combine(kind, e, b + f) + combine(kind, a, f)
    return c + combine(kind, e, b) + combine(kind, a, f)
