"""The time grid: observations averaged into (stay, channel, step) bins, then gaps filled.

A record becomes ``values`` [N, C, L] (bin means, NaN where no observation fell), then ``x``
[N, C, L] float32 with ``mask`` bool [N, C, L] True exactly at the observed bins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["GridAccumulator", "fill_gaps"]


class GridAccumulator:
    """Running sums and counts over a ``[num_stays, num_channels, length]`` grid.

    ``add`` takes 1-D integer arrays ``stay``, ``step`` (all within range; the caller filters)
    and the values of one channel; ``means()`` returns the float32 bin averages with NaN in
    bins that received no observation. Chunks can be added in any order.
    """

    def __init__(self, num_stays: int, num_channels: int, length: int) -> None:
        self.shape = (int(num_stays), int(num_channels), int(length))
        self.sums = np.zeros(self.shape, dtype=np.float64)
        self.counts = np.zeros(self.shape, dtype=np.int32)

    def add(self, stay: np.ndarray, channel: int, step: np.ndarray, values: np.ndarray) -> None:
        stay = np.asarray(stay, dtype=np.int64)
        step = np.asarray(step, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        if stay.size == 0:
            return
        _, c, length = self.shape
        flat = (stay * c + int(channel)) * length + step
        size = self.sums.size
        if size <= 20_000_000:
            self.sums.reshape(-1)[:] += np.bincount(flat, weights=values, minlength=size)
            self.counts.reshape(-1)[:] += np.bincount(flat, minlength=size).astype(np.int32)
        else:  # large grids (full eICU): scatter-add without a full-size temporary
            np.add.at(self.sums.reshape(-1), flat, values)
            np.add.at(self.counts.reshape(-1), flat, 1)

    def means(self) -> np.ndarray:
        out = np.full(self.shape, np.nan, dtype=np.float32)
        seen = self.counts > 0
        out[seen] = (self.sums[seen] / self.counts[seen]).astype(np.float32)
        return out


def fill_gaps(
    values: np.ndarray, *, channels: Sequence[str], source: str = "data"
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Fill NaN gaps of ``values`` [N, C, L]; returns ``(x float32, mask bool, medians)``.

    Per (stay, channel): forward fill along time, then backward fill the leading gap; a channel
    with no observation in a stay is set to a provisional value, the channel's median over all
    observed bins of the source (``medians``), which ``data.impute.impute_splits`` replaces with
    training-split medians once the records are split (it finds these series by their all-False
    ``mask``). ``mask`` is True exactly where ``values`` was finite. Raises
    ``ValueError`` naming the channel if it is never observed anywhere.
    """
    values = np.asarray(values, dtype=np.float32)
    mask = np.isfinite(values)
    n, c, length = values.shape
    medians: dict[str, float] = {}
    for i, name in enumerate(channels):
        observed = values[:, i][mask[:, i]]
        if observed.size == 0:
            raise ValueError(
                f"{source}: channel {name!r} is never observed in any of the {n} stays; choose other channels"
            )
        medians[name] = float(np.median(observed))
    if n == 0:
        return values.copy(), mask, medians
    pos = np.arange(length, dtype=np.int32)
    last = np.where(mask, pos, -1).astype(np.int32)
    np.maximum.accumulate(last, axis=2, out=last)  # index of the last observed bin so far
    first = np.argmax(mask, axis=2).astype(np.int32)  # first observed bin (0 when none)
    index = np.where(last >= 0, last, first[..., None])
    x = np.take_along_axis(values, index, axis=2)
    never = ~mask.any(axis=2)  # [N, C]
    if never.any():
        fallback = np.array([medians[name] for name in channels], dtype=np.float32)
        x = np.where(never[..., None], fallback[None, :, None], x)
    return x.astype(np.float32, copy=False), mask, medians
