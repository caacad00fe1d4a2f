"""Imputation fitted on a training split only, applied to every other split and cohort.

The loaders (``grid.fill_gaps``) fill gaps *within* a record (forward fill, then backward
fill of the leading gap): that uses nothing but the record itself. A channel that a record
never observes (``mask[r, c, :]`` all False) has no value of its own, so it needs a statistic
of other records. That statistic is fitted here, on a training split, and then applied to the
guidance / tuning / test splits and to external cohorts, so no held-out record's value ever
enters it:

    v_c = median { x[r, c, t] : r in train, mask[r, c, t] }            (one value per channel)
    x'[r, c, :] = v_c   for every r with  mask[r, c, :] all False       (any split or cohort)

Entries with ``mask`` True are never changed, and neither is ``mask``. In a federation each
site fits ``v`` on its own training split (the site owns the statistic); the centralized run
fits it per site too, and on the pooled training split for an external cohort.

**Under differential privacy** (``privacy.any_dp``) the medians above are a statistic of raw
training records that would enter the DP-SGD inputs of *other* records and the released test
scores, which no mechanism accounts. So under DP the fill values depend on no raw record: they are
a post-processing of the phase-0 DP release, read off the normalizer fitted on it
(``normalizer_fill_values``: the value the normalizer maps to the centre 0 of the model scale --
for "pit" the median of the merged DP value histogram as its CDF reads it, for "zscore" the DP
mean), and imputation happens after phase 0 (``pipeline.phases.prepare_splits`` leaves the splits
unimputed, ``pipeline.phases.impute_after_phase0`` fills them). Phase 0 itself never sees a fill
value: its statistics count ``mask``-observed entries only.

Shapes: ``x`` float32 [N, C, L], ``mask`` bool [N, C, L], fill values float32 [C].
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .contract import SiteData, SiteSplits
from .normalize import Normalizer

__all__ = ["fit_fill_values", "apply_fill_values", "impute_splits", "normalizer_fill_values", "fill_splits"]


def fit_fill_values(train: SiteData) -> np.ndarray:
    """Per-channel median [C] of the observed training values of ``train``.

    Without a mask every value counts as observed. Raises ``ValueError`` naming the site and
    the channel when a channel is never observed in the training split.
    """
    x = np.asarray(train.x, dtype=np.float32)
    mask = np.ones(x.shape, dtype=bool) if train.mask is None else np.asarray(train.mask, dtype=bool)
    out = np.empty(x.shape[1], dtype=np.float32)
    for c, name in enumerate(train.channels):
        observed = x[:, c][mask[:, c]]
        if observed.size == 0:
            raise ValueError(
                f"site {train.name!r}: channel {name!r} is never observed in its training split "
                f"({train.num_records} records), so it has no value to impute from; choose other data.channels "
                "or leave the site out"
            )
        out[c] = np.median(observed)
    return out


def apply_fill_values(site: SiteData, values: np.ndarray) -> SiteData:
    """``site`` with every never-observed (record, channel) series set to ``values[c]``.

    A site without a mask has no imputed entries and is returned unchanged. Raises
    ``ValueError`` naming the site when ``values`` does not have one entry per channel.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.shape != (site.num_channels,):
        raise ValueError(
            f"site {site.name!r}: {values.shape} fill values for {site.num_channels} channels {site.channels}"
        )
    if site.mask is None:
        return site
    never = ~np.asarray(site.mask, dtype=bool).any(axis=2)  # [N, C]
    x = np.where(never[..., None], values[None, :, None], site.x).astype(np.float32)
    return replace(site, x=x, meta={**site.meta, "fill_values": dict(zip(site.channels, values.tolist()))})


def fill_splits(splits: SiteSplits, values: np.ndarray) -> SiteSplits:
    """All four splits with ``values`` [C] applied (``apply_fill_values``)."""
    return SiteSplits(*(apply_fill_values(part, values) for part in splits.parts().values()))


def impute_splits(splits: SiteSplits) -> SiteSplits:
    """Fit the fill values on ``splits.train`` and apply them to all four splits."""
    return fill_splits(splits, fit_fill_values(splits.train))


def normalizer_fill_values(normalizer: Normalizer, num_channels: int) -> np.ndarray:
    """The DP fill values [C]: ``normalizer.inverse_transform(0)`` per channel, a function of the
    normalizer alone (so of the phase-0 release it was fitted on, never of a record). For the PIT
    normalizer this is the median of its histogram: the x where the piecewise-linear CDF is 1/2."""
    centre = np.zeros((1, num_channels, 1), dtype=np.float32)
    return np.asarray(normalizer.inverse_transform(centre), dtype=np.float32)[0, :, 0]
