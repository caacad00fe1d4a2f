"""Per-channel normalizers fitted from *mergeable* statistics.

Both normalizers are built from sums over records, so a federation can fit them without any
site revealing a value: each site computes its statistics on its own training split, the
server adds them, and the result is bit-for-bit the statistics of the pooled training data.

* ``ZScoreNormalizer``    — (x - mean_c) / std_c from ``ChannelMoments`` (count, sum, sum of squares).
* ``CenteredPITNormalizer`` — the centered probability-integral transform used by TarDiff:
  u = 2 F_c(x) - 1 in [-1, 1], with F_c the per-channel empirical CDF, here read off a
  ``ChannelHistogram`` on a fixed grid and interpolated linearly between bin edges. A small
  pseudo-count per bin (1 % of the mass, spread over the occupied span) keeps F_c strictly
  increasing, so ``inverse_transform`` is the exact inverse of ``transform`` on the span of
  the data (values outside it are clipped to its ends); in float32 the round trip is exact to
  ~1e-4 std. -1 and 1 decode to the (bin-rounded) smallest and largest training values.

Arrays are ``[N, C, L]``; only entries with ``mask == True`` (observed) enter the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ChannelMoments",
    "ChannelHistogram",
    "ZScoreNormalizer",
    "CenteredPITNormalizer",
    "histogram_edges_from_moments",
    "make_normalizer",
    "fit_normalizer",
    "normalizer_from_state",
]


def _observed_by_channel(x: np.ndarray, mask: np.ndarray | None) -> list[np.ndarray]:
    """Per channel, the 1-D float64 array of observed values of ``x`` [N, C, L]."""
    if x.ndim != 3:
        raise ValueError(f"expected x of shape [N, C, L], got {x.shape}")
    x64 = x.astype(np.float64, copy=False)
    if mask is None:
        return [x64[:, c].ravel() for c in range(x.shape[1])]
    return [x64[:, c][mask[:, c]] for c in range(x.shape[1])]


@dataclass(frozen=True)
class ChannelMoments:
    """Per-channel count, sum and sum of squares of observed values; shapes [C]."""

    count: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray

    @classmethod
    def from_data(cls, x: np.ndarray, mask: np.ndarray | None = None) -> ChannelMoments:
        vals = _observed_by_channel(x, mask)
        return cls(
            count=np.array([v.size for v in vals], dtype=np.float64),
            total=np.array([v.sum() for v in vals], dtype=np.float64),
            total_sq=np.array([(v * v).sum() for v in vals], dtype=np.float64),
        )

    def __add__(self, other: ChannelMoments) -> ChannelMoments:
        return ChannelMoments(
            self.count + other.count, self.total + other.total, self.total_sq + other.total_sq
        )

    @property
    def mean(self) -> np.ndarray:
        return self.total / np.maximum(self.count, 1)

    @property
    def std(self) -> np.ndarray:
        var = self.total_sq / np.maximum(self.count, 1) - self.mean**2
        return np.sqrt(np.maximum(var, 0.0))

    def to_arrays(self) -> list[np.ndarray]:
        return [self.count, self.total, self.total_sq]

    @classmethod
    def from_arrays(cls, arrays: list[np.ndarray]) -> ChannelMoments:
        count, total, total_sq = (np.asarray(a, dtype=np.float64) for a in arrays)
        return cls(count, total, total_sq)


def histogram_edges_from_moments(
    moments: ChannelMoments, *, num_bins: int = 4096, width_in_std: float = 20.0
) -> np.ndarray:
    """Fixed grid per channel: ``num_bins`` equal bins over mean ± ``width_in_std`` · std.

    Derived from the (mergeable) moments only, so every site can build the same grid without
    anyone sending a minimum or maximum (which would be a real record's value). Shape [C, B+1].
    """
    std = np.where(moments.std > 0, moments.std, 1.0)
    lo = moments.mean - width_in_std * std
    hi = moments.mean + width_in_std * std
    return np.stack([np.linspace(a, b, num_bins + 1) for a, b in zip(lo, hi)])


@dataclass(frozen=True)
class ChannelHistogram:
    """Per-channel counts of observed values on a fixed grid. edges [C, B+1], counts [C, B].

    Values beyond the grid are counted in the first / last bin, so no observation is lost.
    """

    edges: np.ndarray
    counts: np.ndarray

    @classmethod
    def from_data(
        cls, x: np.ndarray, edges: np.ndarray, mask: np.ndarray | None = None
    ) -> ChannelHistogram:
        vals = _observed_by_channel(x, mask)
        if edges.shape[0] != len(vals):
            raise ValueError(f"edges cover {edges.shape[0]} channels, data has {len(vals)}")
        counts = np.stack(
            [
                np.histogram(np.clip(v, e[0], e[-1]), bins=e)[0].astype(np.float64)
                for v, e in zip(vals, edges)
            ]
        )
        return cls(edges=np.asarray(edges, dtype=np.float64), counts=counts)

    def __add__(self, other: ChannelHistogram) -> ChannelHistogram:
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("cannot add histograms built on different grids")
        return ChannelHistogram(self.edges, self.counts + other.counts)


class ZScoreNormalizer:
    """x -> (x - mean_c) / std_c per channel. ``mean``, ``std``: [C]."""

    kind = "zscore"

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.where(np.asarray(std, dtype=np.float64) > 0, std, 1.0)

    @classmethod
    def from_moments(cls, moments: ChannelMoments) -> ZScoreNormalizer:
        return cls(moments.mean, moments.std)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean[None, :, None]) / self.std[None, :, None]).astype(np.float32)

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        return (z * self.std[None, :, None] + self.mean[None, :, None]).astype(np.float32)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "mean": self.mean.tolist(), "std": self.std.tolist()}


class CenteredPITNormalizer:
    """x -> 2 F_c(x) - 1 with a piecewise-linear, strictly increasing per-channel CDF.

    Per channel c: ``knots_x[c]`` strictly increasing values and ``knots_u[c]`` strictly
    increasing targets from -1 to 1 (1-D arrays; channels may have different knot counts).
    Values below the first / above the last knot map to -1 / 1.
    """

    kind = "pit"

    def __init__(self, knots_x: list[np.ndarray], knots_u: list[np.ndarray]):
        self.knots_x = [np.asarray(k, dtype=np.float64) for k in knots_x]
        self.knots_u = [np.asarray(k, dtype=np.float64) for k in knots_u]
        if len(self.knots_x) != len(self.knots_u):
            raise ValueError("knots_x and knots_u must cover the same channels")
        for kx, ku in zip(self.knots_x, self.knots_u):
            if kx.ndim != 1 or kx.shape != ku.shape or kx.size < 2:
                raise ValueError("each channel needs matching 1-D knots_x and knots_u with >= 2 knots")
            if np.any(np.diff(kx) <= 0) or np.any(np.diff(ku) <= 0):
                raise ValueError("PIT knots must be strictly increasing")

    @classmethod
    def from_histogram(
        cls, hist: ChannelHistogram, *, pseudo_count: float = 1e-2
    ) -> CenteredPITNormalizer:
        """CDF at the bin edges from cumulative counts, on the span of occupied bins.

        Each bin between the first and last occupied one gets ``pseudo_count`` x the mean
        count per occupied bin, which keeps the CDF strictly increasing across empty bins.
        The span's ends map to -1 and 1, so the transform uses all of [-1, 1] for the data.
        """
        knots_x, knots_u = [], []
        for edges, counts in zip(hist.edges, hist.counts):
            occupied = np.flatnonzero(counts > 0)
            if occupied.size == 0:
                raise ValueError("cannot fit a PIT normalizer: a channel has no observed values")
            lo, hi = occupied[0], occupied[-1]
            span = counts[lo : hi + 1]
            span = span + pseudo_count * span.sum() / occupied.size
            cdf = np.concatenate([[0.0], np.cumsum(span)])
            knots_x.append(edges[lo : hi + 2])
            knots_u.append(2.0 * cdf / cdf[-1] - 1.0)
        return cls(knots_x, knots_u)

    def transform(self, x: np.ndarray) -> np.ndarray:
        out = np.empty(x.shape, dtype=np.float64)
        for c, (kx, ku) in enumerate(zip(self.knots_x, self.knots_u)):
            out[:, c] = np.interp(x[:, c], kx, ku)
        return out.astype(np.float32)

    def inverse_transform(self, u: np.ndarray) -> np.ndarray:
        out = np.empty(u.shape, dtype=np.float64)
        for c, (kx, ku) in enumerate(zip(self.knots_x, self.knots_u)):
            out[:, c] = np.interp(np.clip(u[:, c], -1.0, 1.0), ku, kx)
        return out.astype(np.float32)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "knots_x": [k.tolist() for k in self.knots_x],
                "knots_u": [k.tolist() for k in self.knots_u]}


Normalizer = ZScoreNormalizer | CenteredPITNormalizer


def make_normalizer(
    kind: str,
    moments: ChannelMoments,
    histogram: ChannelHistogram | None = None,
) -> Normalizer:
    """Build the normalizer named ``kind`` ("zscore" or "pit") from merged statistics."""
    if kind == "zscore":
        return ZScoreNormalizer.from_moments(moments)
    if kind == "pit":
        if histogram is None:
            raise ValueError("the 'pit' normalizer needs a ChannelHistogram")
        return CenteredPITNormalizer.from_histogram(histogram)
    raise ValueError(f"unknown normalizer {kind!r}; choose 'zscore' or 'pit'")


def fit_normalizer(
    kind: str, x: np.ndarray, mask: np.ndarray | None = None, *, num_bins: int = 4096
) -> Normalizer:
    """Fit on one array (the centralized path); identical to the federated path on pooled data."""
    moments = ChannelMoments.from_data(x, mask)
    hist = None
    if kind == "pit":
        hist = ChannelHistogram.from_data(x, histogram_edges_from_moments(moments, num_bins=num_bins), mask)
    return make_normalizer(kind, moments, hist)


def normalizer_from_state(state: dict) -> Normalizer:
    """Inverse of ``state_dict``; raises ``ValueError`` on an unknown or malformed state."""
    kind = state.get("kind")
    if kind == "zscore":
        return ZScoreNormalizer(np.array(state["mean"]), np.array(state["std"]))
    if kind == "pit":
        return CenteredPITNormalizer([np.array(k) for k in state["knots_x"]], [np.array(k) for k in state["knots_u"]])
    raise ValueError(f"unknown normalizer state kind {kind!r}")
