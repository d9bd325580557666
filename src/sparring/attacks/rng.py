"""Per-sample, counter-based random streams: a point's random draws depend on its identity, not its batch.

Every random number an attack draws for sample i is a hash of (seed, id_i, counters, element):

    u_{i, c, j} = H(((a + j·φ) mod 2³²) ⊕ b) / 2³²,     (a, b) = K(seed, id_i, c): two 32-bit keys,  φ = ⌊2³²/golden⌋

where ``id_i`` is the sample's identity (its global index in the evaluated set, :func:`sparring.evaluate.evaluate`
passes it), ``c`` a path of draw counters the attack chooses (restart, target class, ...) and ``j`` the element's
flat index within the sample. Nothing depends on the batch mates, on which rows are still attacked, or on the
batch size: sample i attacked alone, in a batch of 7 or of 512 draws the same numbers (the idea of counter-based
generators, Salmon et al., SC 2011 "Parallel random numbers: as easy as 1, 2, 3", with a lighter hash: one mixing
round over a Weyl sequence, as SplitMix does).

The hash is ``lowbias32`` (an xorshift-multiply 32-bit mixer with constants by C. Wellons, public domain), applied
in int64 torch ops (no product overflows) so it runs vectorised on any device with no host round trip. Uniform
floats keep the top 24 bits (``[0, 1)``, step 2⁻²⁴), normals come from Box–Muller on two independent lanes,
integers from the multiply-shift map ``⌊h · n / 2³²⌋``. Keys are two 32-bit words per row, so two samples share a
stream only with probability 2⁻⁶⁴. Cost on one CPU core: about 50 ms for 256 × 3 × 32 × 32 uniforms (torch.rand:
2 ms), 150 ms for as many normals; once per restart, so a small share of an attack (negligible on a GPU).

Without ids (``attack(model, x, y, threat, generator=g)``) the rows are numbered ``0 … B−1`` and the seed is one
draw from ``g`` (the global generator when None): a sample's result then does not depend on its batch mates (row i
keeps its numbers whatever the other rows hold), but it depends on its row. Results independent of the batch size
need stable ids, as :func:`~sparring.evaluate.evaluate` passes (``streams=SampleStreams.of(seed, ids)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # ⌊2³² / φ⌋, odd: j ↦ j · φ mod 2³² is a bijection (a Weyl sequence)
_LANES = (0x243F6A88, 0x85A308D3)  # the two key words start from different states (digits of π)
# Kind tags folded into the keys so that two kinds of draw at the same counter are independent.
_UNIFORM, _NORMAL_A, _NORMAL_B, _INT, _BITS = 0x51ED27, 0x6A09E6, 0xBB67AE, 0x3C6EF3, 0xA54FF5


def mul32(a: Tensor, m: int) -> Tensor:
    """``a · m mod 2³²`` for int64 ``a`` in [0, 2³²), in two halves so no int64 product overflows."""
    return (a * (m & 0xFFFF) + (((a * (m >> 16)) & 0xFFFF) << 16)) & _MASK32


def mix32(h: Tensor) -> Tensor:
    """A bijective hash of int64 ``h`` in [0, 2³²) ("lowbias32": xorshift-multiply, the constants of C. Wellons'
    hash-prospector, public domain). Both multipliers are below 2³¹, so each product fits in int64 exactly."""
    h = h ^ (h >> 16)
    h = (h * 0x21F0AAAD) & _MASK32
    h = h ^ (h >> 15)
    h = (h * 0x735A2D97) & _MASK32
    return h ^ (h >> 15)


def fold(h: Tensor, value: Tensor | int) -> Tensor:
    """A new 32-bit key from key ``h`` and a value (a counter, a word of a seed or an id)."""
    return mix32(h ^ mix32((torch.as_tensor(value, dtype=torch.int64, device=h.device) + 0x632BE5AB) & _MASK32))


@dataclass(frozen=True)
class SampleStreams:
    """Random streams, one per row of a batch: ``keys`` (B, 2) int64, two 32-bit words per row.

    Build with :meth:`of` (a seed and per-row ids) or :meth:`from_generator`; :meth:`rows` selects rows (a
    sub-problem keeps its samples' streams), :meth:`at` moves to a sub-stream (a restart, a target class). Every
    draw returns (B, *shape) and depends on the row's key alone.
    """

    keys: Tensor

    @staticmethod
    def of(seed: int | Tensor, ids: Tensor) -> SampleStreams:
        """Streams for samples ``ids`` (B,) (their global indices) under ``seed`` (an int or a 0-d int64 tensor)."""
        ids = ids.to(torch.int64)
        seed = torch.as_tensor(seed, dtype=torch.int64, device=ids.device)
        words = [seed & _MASK32, (seed >> 32) & _MASK32]
        keys = []
        for lane in _LANES:
            h = torch.full_like(ids, lane)
            for word in (*words, ids & _MASK32, (ids >> 32) & _MASK32):
                h = fold(h, word)
            keys.append(h)
        return SampleStreams(torch.stack(keys, 1))

    @staticmethod
    def from_generator(generator: torch.Generator | None, batch: int, device: torch.device) -> SampleStreams:
        """Rows numbered ``0 … batch−1`` under a seed drawn once from ``generator`` (the global one when None)."""
        seed_device = generator.device if generator is not None else device
        seed = torch.randint(0, 2**62, (), generator=generator, device=seed_device).to(device)
        return SampleStreams.of(seed, torch.arange(batch, device=device))

    def __len__(self) -> int:
        return self.keys.shape[0]

    def to(self, device: torch.device | str) -> SampleStreams:
        return SampleStreams(self.keys.to(device))

    def rows(self, index: Tensor) -> SampleStreams:
        """The streams of rows ``index`` (an index tensor or a bool mask)."""
        return SampleStreams(self.keys[index.to(self.keys.device)])

    def at(self, *counters: int) -> SampleStreams:
        """The sub-streams at draw counters ``counters`` (e.g. ``at(restart)``, ``at(target, restart)``)."""
        keys = self.keys
        for c in counters:
            keys = torch.stack([fold(keys[:, 0], c), fold(keys[:, 1], c ^ 0x5F356495)], 1)
        return SampleStreams(keys)

    # --------------------------------------------------------------------------------------------- draws
    def bits(self, shape: tuple[int, ...] | torch.Size, *, kind: int = _BITS) -> Tensor:
        """(B, *shape) uniform integers in [0, 2³²) (int64)."""
        n = 1
        for s in shape:
            n *= int(s)
        keys = self.at(kind).keys  # (B, 2)
        j = mul32(torch.arange(n, device=keys.device, dtype=torch.int64), _GOLDEN)  # (n,)
        h = mix32(((keys[:, :1] + j) & _MASK32) ^ keys[:, 1:])  # (B, n): SplitMix-style, one mixing round
        return h.view(len(self), *shape)

    def uniform(self, shape: tuple[int, ...] | torch.Size, *, dtype: torch.dtype = torch.float32,
                kind: int = _UNIFORM) -> Tensor:
        """(B, *shape) uniform floats in [0, 1) (24 random bits)."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        return ((self.bits(shape, kind=kind) >> 8).to(work) * 2.0**-24).to(dtype)

    def normal(self, shape: tuple[int, ...] | torch.Size, *, dtype: torch.dtype = torch.float32) -> Tensor:
        """(B, *shape) standard normals (Box–Muller on two independent uniform lanes)."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        u1 = self.uniform(shape, dtype=work, kind=_NORMAL_A)
        u2 = self.uniform(shape, dtype=work, kind=_NORMAL_B)
        radius = torch.sqrt(-2.0 * torch.log1p(-u1))  # 1 − u1 ∈ (0, 1]: finite
        return (radius * torch.cos(2.0 * torch.pi * u2)).to(dtype)

    def randint(self, high: int, shape: tuple[int, ...] | torch.Size) -> Tensor:
        """(B, *shape) uniform integers in [0, high) (int64; ``high`` < 2³¹)."""
        if not 0 < high < 2**31:
            raise ValueError(f"high must lie in (0, 2**31), got {high}")
        return (self.bits(shape, kind=_INT) * high) >> 32
