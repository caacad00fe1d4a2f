"""The one data contract every source (embedded generator, eICU, MIMIC-III, PhysioNet 2012) meets.

A *site* (one hospital) holds

* ``x``    — float32 array ``[N, C, L]``: N records, C channels (vital signs), L time steps.
             Finite everywhere; gaps are already filled (see ``mask``).
* ``y``    — int64 array ``[N]`` with values in {0, 1} (the clinical outcome).
* ``mask`` — optional bool array ``[N, C, L]``: True where the value was observed,
             False where it was imputed.

``validate_site`` turns every violation into a ``ValueError`` that names the site and the
field, so a bad file fails loudly at the loader instead of deep inside a training loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["SiteData", "SiteSplits", "SPLIT_NAMES", "DEFAULT_SPLIT_FRACTIONS", "validate_site", "stratified_split",
           "concat_sites"]


@dataclass(frozen=True)
class SiteData:
    """Records held by one site. Shapes: x [N, C, L] float32, y [N] int64, mask [N, C, L] bool."""

    name: str
    x: np.ndarray
    y: np.ndarray
    channels: tuple[str, ...]
    mask: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def num_records(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def length(self) -> int:
        return int(self.x.shape[2])

    @property
    def prevalence(self) -> float:
        return float(self.y.mean()) if self.y.size else float("nan")

    def subset(self, index: np.ndarray, name: str | None = None) -> SiteData:
        """Records ``index`` of this site (a copy), keeping channels and meta."""
        return replace(
            self,
            name=name or self.name,
            x=self.x[index],
            y=self.y[index],
            mask=None if self.mask is None else self.mask[index],
        )

    def summary(self) -> dict:
        """Records, prevalence and per-channel missingness (fraction of imputed values)."""
        missing = (
            {c: float(1.0 - self.mask[:, i].mean()) for i, c in enumerate(self.channels)}
            if self.mask is not None and self.num_records
            else {c: 0.0 for c in self.channels}
        )
        return {
            "site": self.name,
            "records": self.num_records,
            "positives": int(self.y.sum()),
            "prevalence": self.prevalence,
            "missing_fraction": missing,
        }


SPLIT_NAMES = ("train", "guidance", "tuning", "test")
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.1, 0.1, 0.1)


@dataclass(frozen=True)
class SiteSplits:
    """Stratified splits of one site, the paper's validation protocol made explicit:

    * ``train``    — fits the classifier f_theta and the diffusion model;
    * ``guidance`` — the Guidance-Val split: G = sum of loss gradients over it, nothing else;
    * ``tuning``   — the Evaluation-Val split: every choice (guidance scale and form, F1
                     threshold) is made on it;
    * ``test``     — touched once, for the reported tables.
    """

    train: SiteData
    guidance: SiteData
    tuning: SiteData
    test: SiteData

    def parts(self) -> dict[str, SiteData]:
        return {name: getattr(self, name) for name in SPLIT_NAMES}

    @property
    def name(self) -> str:
        return self.train.name


def validate_site(site: SiteData, *, require_both_classes: bool = True) -> SiteData:
    """Check the data contract; raise ``ValueError`` naming the site and the offending field.

    Returns the site with ``x`` cast to float32 and ``y`` to int64 (no copy if already so).
    """
    where = f"site {site.name!r}"
    x, y, mask = site.x, site.y, site.mask
    if not isinstance(x, np.ndarray) or x.ndim != 3:
        raise ValueError(f"{where}: x must be an array [N, C, L], got shape {np.shape(x)}")
    n, c, length = x.shape
    if n == 0:
        raise ValueError(f"{where}: x is empty (no records)")
    if c != len(site.channels):
        raise ValueError(
            f"{where}: x has {c} channels but {len(site.channels)} channel names {site.channels}"
        )
    if length < 2:
        raise ValueError(f"{where}: series length must be >= 2, got {length}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{where}: x must be numeric, got dtype {x.dtype}")
    bad = ~np.isfinite(x)
    if bad.any():
        rec, ch, _ = np.argwhere(bad)[0]
        raise ValueError(
            f"{where}: x has {int(bad.sum())} NaN/inf values "
            f"(first in record {rec}, channel {site.channels[ch]!r}); fill gaps and pass a mask"
        )
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{where}: y must have shape [{n}] to match x, got {y.shape}")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError(f"{where}: y has NaN/inf labels")
    labels = set(np.unique(y).tolist())
    if not labels <= {0, 1}:
        raise ValueError(f"{where}: labels must be in {{0, 1}}, found {sorted(labels - {0, 1})}")
    if require_both_classes and len(labels) < 2:
        only = labels.pop()
        raise ValueError(f"{where}: only class {only} is present; both 0 and 1 are needed")
    if mask is not None:
        if np.shape(mask) != x.shape:
            raise ValueError(f"{where}: mask shape {np.shape(mask)} differs from x shape {x.shape}")
        mask = np.asarray(mask, dtype=bool)
    return replace(site, x=x.astype(np.float32, copy=False), y=y.astype(np.int64), mask=mask)


def stratified_split(
    site: SiteData,
    *,
    fractions: tuple[float, ...] = DEFAULT_SPLIT_FRACTIONS,
    seed: int = 0,
) -> SiteSplits:
    """Split one site train / guidance / tuning / test (70/10/10/10 by default) per class, so
    each split keeps the site's prevalence.

    Each class is shuffled with ``seed`` and cut at the cumulative fractions; each of the
    three small splits receives a record of a class when that class has at least 4 records.
    Raises ``ValueError`` naming the site, the split and the sizes if a split ends up empty.
    """
    if len(fractions) != 4 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError("split fractions (train, guidance, tuning, test) must be four positive numbers summing "
                         f"to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in SPLIT_NAMES]
    for label in np.unique(site.y):
        idx = np.flatnonzero(site.y == label)
        rng.shuffle(idx)
        n = len(idx)
        small = [int(round(f * n)) for f in fractions[1:]]
        # Give the small splits a record of each class when the class can spare it.
        if n >= len(SPLIT_NAMES):
            small = [max(k, 1) for k in small]
        while sum(small) > n:  # rounding up on a tiny class: take back from the largest small split
            small[int(np.argmax(small))] -= 1
        bounds = np.cumsum([n - sum(small), *small])
        for part, chunk in zip(parts, np.split(idx, bounds[:-1])):
            part.append(chunk)
    out = []
    for split_name, chunks in zip(SPLIT_NAMES, parts):
        index = np.sort(np.concatenate(chunks)) if chunks else np.array([], dtype=np.int64)
        if index.size == 0:
            raise ValueError(
                f"site {site.name!r} is too small for a train / guidance / tuning / test split: its {split_name} "
                f"split is empty ({site.num_records} records, {int(site.y.sum())} positive, fractions {fractions}); "
                "give it more records, or leave it out (data.min-site-records)"
            )
        out.append(site.subset(index))
    return SiteSplits(*out)


def concat_sites(sites: list[SiteData], name: str = "pooled") -> SiteData:
    """Pool several sites into one (for centralized baselines). Channels must agree."""
    if not sites:
        raise ValueError("concat_sites: no sites given")
    channels = sites[0].channels
    for s in sites[1:]:
        if s.channels != channels:
            raise ValueError(f"site {s.name!r} has channels {s.channels}, expected {channels}")
        if s.length != sites[0].length:
            raise ValueError(f"site {s.name!r} has length {s.length}, expected {sites[0].length}")
    has_mask = all(s.mask is not None for s in sites)
    return SiteData(
        name=name,
        x=np.concatenate([s.x for s in sites]),
        y=np.concatenate([s.y for s in sites]),
        channels=channels,
        mask=np.concatenate([s.mask for s in sites]) if has_mask else None,
    )
