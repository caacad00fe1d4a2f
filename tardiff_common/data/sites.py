"""Site assembly: candidate stays grouped into validated ``SiteData``, small sites dropped.

``assemble_sites`` drops unusable stays (counted by reason), fills gaps (``grid.fill_gaps``)
and groups the rest into sites; ``drop_small_sites`` removes sites below ``min_site_records``
loudly; ``summarize_sites`` renders the per-site table of ``tardiff data-summary``.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from tardiff_common.data.contract import SiteData, validate_site
from tardiff_common.data.grid import fill_gaps
from tardiff_common.data.tables import natural_key

__all__ = ["assemble_sites", "drop_small_sites", "single_class_sites", "summarize_sites"]


def assemble_sites(
    *,
    source: str,
    task: str,
    site_by: str,
    channels: Sequence[str],
    stay_ids: np.ndarray,
    sites: Sequence,
    labels: np.ndarray,
    values: np.ndarray,
    reasons: Sequence,
    meta: dict | None = None,
) -> list[SiteData]:
    """Group candidate stays into validated ``SiteData`` (all sites, no size filter).

    Inputs are aligned per candidate stay: ``stay_ids`` [S], ``sites`` [S] (site name or None),
    ``labels`` [S] (0/1; NaN = unknown), ``values`` [S, C, L] (bin means, NaN = no observation),
    ``reasons`` [S] (None to keep, else why the stay is dropped). Stays without any observation
    are dropped as ``"no_vitals"``; drop counts go to ``meta["dropped"]`` (the stay's site) and
    ``meta["dropped_total"]`` (all sites, including stays that had no site).
    """
    stay_ids = np.asarray(stay_ids)
    labels = np.asarray(labels, dtype=np.float64)
    site_arr = np.array([None if _is_missing(s) else str(s) for s in sites], dtype=object)
    reason = np.array(list(reasons), dtype=object)
    if len({len(stay_ids), len(site_arr), len(labels), len(values), len(reason)}) != 1:
        raise ValueError(f"{source}: candidate stay arrays have different lengths")
    keep = np.array([r is None for r in reason], dtype=bool)
    unknown_label = keep & ~np.isfinite(labels)
    reason[unknown_label] = "unknown_outcome"
    keep &= ~unknown_label
    no_site = keep & np.array([s is None for s in site_arr], dtype=bool)
    reason[no_site] = "no_site"
    keep &= ~no_site
    no_obs = keep & ~np.isfinite(values).reshape(len(values), -1).any(axis=1)
    reason[no_obs] = "no_vitals"
    keep &= ~no_obs

    dropped_total = dict(sorted(Counter(reason[~keep].tolist()).items()))
    dropped_by_site: dict[str, dict[str, int]] = {}
    for s, r in zip(site_arr[~keep], reason[~keep], strict=True):
        if s is not None:
            d = dropped_by_site.setdefault(s, {})
            d[r] = d.get(r, 0) + 1
    if not keep.any():
        raise ValueError(f"{source}: no usable stay (dropped: {dropped_total})")

    x, mask, medians = fill_gaps(values[keep], channels=channels, source=source)
    y = labels[keep].astype(np.int64)
    kept_sites = site_arr[keep]
    kept_ids = stay_ids[keep]
    common = {"source": source, "task": task, "site_by": site_by, **(meta or {})}
    common["fill_median"] = medians
    common["dropped_total"] = dropped_total
    out = []
    for name in sorted(set(kept_sites.tolist()), key=natural_key):
        idx = np.flatnonzero(kept_sites == name)
        site = SiteData(
            name=name,
            x=x[idx],
            y=y[idx],
            channels=tuple(channels),
            mask=mask[idx],
            meta={
                **common,
                "dropped": dict(sorted(dropped_by_site.get(name, {}).items())),
                "stay_ids": kept_ids[idx],
            },
        )
        out.append(validate_site(site, require_both_classes=False))
    return out


def _is_missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def drop_small_sites(sites: list[SiteData], min_site_records: int, *, source: str = "data") -> list[SiteData]:
    """Drop sites with fewer than ``min_site_records`` records, loudly.

    The drop is reported through ``warnings.warn`` (naming each site and its size) and recorded
    in each kept site's ``meta["dropped_sites"]`` ({name: records}). Raises ``ValueError`` when
    no site is left.
    """
    small = {s.name: s.num_records for s in sites if s.num_records < min_site_records}
    kept = [
        replace(s, meta={**s.meta, "dropped_sites": dict(small), "min_site_records": min_site_records})
        for s in sites
        if s.num_records >= min_site_records
    ]
    if small:
        listing = ", ".join(f"{k} ({v})" for k, v in small.items())
        warnings.warn(
            f"{source}: dropped {len(small)} of {len(sites)} site(s) with fewer than "
            f"{min_site_records} records: {listing}",
            stacklevel=3,
        )
    if not kept:
        raise ValueError(f"{source}: no site has at least min_site_records={min_site_records} records (sizes: {small})")
    return kept


def single_class_sites(sites: Iterable[SiteData]) -> dict[str, int]:
    """{site name: the only class present} for sites holding a single class."""
    out = {}
    for s in sites:
        labels = np.unique(s.y)
        if labels.size == 1:
            out[s.name] = int(labels[0])
    return out


def summarize_sites(sites: Sequence[SiteData]) -> str:
    """Markdown table: site, records, positives, prevalence, missing fraction per channel.

    A site with a single class is flagged in the last column ("only class 0/1").
    """
    if not sites:
        return "(no sites)"
    channels = list(sites[0].channels)
    head = ["site", "records", "positives", "prevalence"] + [f"miss {c}" for c in channels] + ["flag"]
    rows = [head, ["---"] * len(head)]
    total_n = total_pos = 0
    for s in sites:
        info = s.summary()
        labels = np.unique(s.y)
        flag = f"only class {int(labels[0])}" if labels.size == 1 else ""
        miss = [f"{info['missing_fraction'].get(c, float('nan')):.3f}" for c in channels]
        rows.append([s.name, str(info["records"]), str(info["positives"]), f"{info['prevalence']:.3f}"] + miss + [flag])
        total_n += info["records"]
        total_pos += info["positives"]
    if len(sites) > 1 and all(s.channels == sites[0].channels for s in sites):
        miss_all = []
        for i, _ in enumerate(channels):
            obs = sum(float(s.mask[:, i].sum()) if s.mask is not None else s.x[:, i].size for s in sites)
            size = sum(s.x[:, i].size for s in sites)
            miss_all.append(f"{1.0 - obs / size:.3f}")
        rows.append(["**all**", str(total_n), str(total_pos), f"{total_pos / max(total_n, 1):.3f}"] + miss_all + [""])
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)
