"""A pseudo-random permutation of ``range(n)`` computed by arithmetic: no index array of length n.

``torch.randperm(n)`` costs ``8 n`` bytes and a pass over them before the first batch: 160 MB and
up to a second for 20M token windows, 8 GB for 1B. A keyed Feistel network is a bijection of
``[0, 2**b)``, ``b`` the bits of ``n - 1``; walking its cycle until the value falls below ``n``
(fewer than two steps on average, since ``2**b < 2 n``) makes it a bijection of ``[0, n)``. Any position's value is
computed alone, so a batch costs its own indices only, and a resumed epoch starts at any batch.
Vectorised over NumPy ``uint64`` arrays, where overflow wraps by definition.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Permutation"]

_U64 = np.dtype(np.uint64)
_ROUNDS = 6
_MUL = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: Fibonacci hashing


_U64s = np.ndarray[Any, np.dtype[np.uint64]]


def _round(right: _U64s, key: np.uint64, bits: int) -> _U64s:
    # multiplicative hashing: the top ``bits`` bits of (right ^ key) * odd constant; cheap and
    # well mixed, which is all a Feistel round function needs (it need not be invertible)
    return ((right ^ key) * _MUL) >> np.uint64(64 - bits)


class Permutation:
    """The permutation of ``range(n)`` drawn by ``(seed, epoch)``; ``perm[positions]`` by arithmetic.

    >>> p = Permutation(10, seed=0, epoch=0)
    >>> sorted(p[np.arange(10)].tolist()) == list(range(10))
    True
    """

    __slots__ = ("_bits", "_keys", "n")

    def __init__(self, n: int, *, seed: int, epoch: int) -> None:
        self.n = int(n)
        bits = max(2, (self.n - 1).bit_length())
        # an unbalanced Feistel network over exactly ``bits`` bits: the domain is below 2 n, so
        # the cycle walk takes fewer than two round trips on average
        self._bits = (bits // 2, bits - bits // 2)  # (left, right) widths; an even round count restores them
        words = np.random.SeedSequence([int(seed) & (2**63 - 1), int(epoch) & (2**63 - 1)]).generate_state(
            _ROUNDS, np.uint64
        )
        self._keys = [np.uint64(k) for k in words]

    def _round_trip(self, x: np.ndarray[Any, np.dtype[np.uint64]]) -> np.ndarray[Any, np.dtype[np.uint64]]:
        lbits, rbits = self._bits
        left, right = x >> np.uint64(rbits), x & np.uint64((1 << rbits) - 1)
        for key in self._keys:
            # (L, R) of widths (a, b) -> (R, L ^ F(R)) of widths (b, a): a bijection for any a, b
            left, right = right, left ^ _round(right, key, lbits)
            lbits, rbits = rbits, lbits
        return (left << np.uint64(rbits)) | right

    def __getitem__(self, positions: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The permuted values at ``positions`` (an int array, each in ``[0, n)``)."""
        x = np.asarray(positions, dtype=np.int64).astype(_U64).reshape(-1)
        x = self._round_trip(x)
        limit = np.uint64(self.n)
        # cycle walking: a few more round trips, each on the values still out of range only (a
        # pass over the whole array per round trip would cost more than the walk itself)
        out = np.flatnonzero(x >= limit)
        while out.size:
            y = self._round_trip(x[out])
            x[out] = y
            out = out[y >= limit]
        return x.astype(np.int64)
