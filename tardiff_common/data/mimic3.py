"""MIMIC-III (full database or the open demo): 7 vital signs x 24 hourly steps per ICU stay.

Tables (``path`` = folder; file names upper- or lower-case, ``.csv`` or ``.csv.gz``; column
names matched case-insensitively):

* ``CHARTEVENTS`` — one file or several parts (``chartevents_1.csv.gz``, ``chartevents_2...``;
  all parts are read). Columns ``icustay_id``, ``itemid``, ``charttime``, ``valuenum``
  (``error`` too when present: rows with ``error == 1`` are discarded). Read in chunks with
  only these columns; only the vital-sign itemids below are kept.
* ``ICUSTAYS`` — ``icustay_id``, ``hadm_id``, ``intime``, ``los`` (days), ``first_careunit``.
* ``ADMISSIONS`` — ``hadm_id``, ``hospital_expire_flag``.

Channels (``ITEMIDS``; CareVue and MetaVision ids) and units:

=======  ====================================================  =========
channel  itemids                                               unit
=======  ====================================================  =========
HR       211, 220045                                           beats/min
SBP      51, 442, 455, 6701, 220179, 220050                    mmHg
DBP      8368, 8440, 8441, 8555, 220180, 220051                mmHg
MBP      456, 52, 6702, 443, 220052, 220181, 225312            mmHg
RR       615, 618, 220210, 224690                              breaths/min
Temp     223761, 678 (°F, converted: (F - 32) * 5 / 9); 223762, 676 (°C)   °C
SpO2     646, 220277                                           %
=======  ====================================================  =========

Values outside ``VITAL_RANGES`` (after the °F → °C conversion) are discarded and counted in
``meta["implausible_values"]``.

Grid: ``L = 24`` hourly steps from ICU ``intime``: a chart event at ``charttime`` goes to step
``floor((charttime - intime) / 1 h)`` if that is in ``[0, L)`` (``length`` configurable); values
in the same step are averaged. Gaps: forward fill, backward fill for the leading gap, per-
channel source median for a channel never charted in the window (``mask`` False there).

Output per site: ``x`` float32 [N, C, L], ``y`` int64 [N], ``mask`` bool [N, C, L], ``meta``
with ``stay_ids`` (``icustay_id``), ``dropped`` / ``dropped_total`` (dropped stays by reason:
``unknown_outcome``, ``no_site``, ``no_vitals``), ``implausible_values``, ``fill_median``.

Labels: ``"mortality"`` = ``hospital_expire_flag`` of the stay's admission (in-hospital
death); ``"los"`` = ICU ``los > 3`` days. Sites: ``site_by="careunit"`` (default;
``first_careunit``: CCU, CSRU, MICU, SICU, TSICU) or ``"all"``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from tardiff_common.data.contract import SiteData
from tardiff_common.data.grid import GridAccumulator
from tardiff_common.data.sites import assemble_sites, drop_small_sites
from tardiff_common.data.tables import filter_ranges, find_table, log, read_csv_table

__all__ = [
    "ITEMIDS",
    "FAHRENHEIT_ITEMIDS",
    "VITAL_RANGES",
    "DEFAULT_CHANNELS",
    "DEFAULT_LENGTH",
    "LOS_THRESHOLD_DAYS",
    "input_files",
    "build_sites",
    "load_mimic3",
]

#: itemids per channel (CareVue + MetaVision).
ITEMIDS: dict[str, tuple[int, ...]] = {
    "HR": (211, 220045),
    "SBP": (51, 442, 455, 6701, 220179, 220050),
    "DBP": (8368, 8440, 8441, 8555, 220180, 220051),
    "MBP": (456, 52, 6702, 443, 220052, 220181, 225312),
    "RR": (615, 618, 220210, 224690),
    "Temp": (223761, 678, 223762, 676),
    "SpO2": (646, 220277),
}
#: Temperature itemids charted in °F (converted to °C).
FAHRENHEIT_ITEMIDS: frozenset[int] = frozenset({223761, 678})

#: Plausible [low, high] per channel (inclusive, in the output unit); others are discarded.
VITAL_RANGES: dict[str, tuple[float, float]] = {
    "HR": (20.0, 300.0),  # beats/min
    "SBP": (20.0, 300.0),  # mmHg
    "DBP": (5.0, 200.0),  # mmHg
    "MBP": (10.0, 250.0),  # mmHg
    "RR": (1.0, 80.0),  # breaths/min
    "Temp": (25.0, 45.0),  # °C
    "SpO2": (40.0, 100.0),  # %
}

DEFAULT_CHANNELS: tuple[str, ...] = ("HR", "SBP", "DBP", "MBP", "RR", "Temp", "SpO2")
DEFAULT_LENGTH = 24
LOS_THRESHOLD_DAYS = 3.0


def _check(task: str, site_by: str, channels: tuple[str, ...]) -> str:
    if task not in ("mortality", "los"):
        raise ValueError(f"mimic3: unknown task {task!r}; choose 'mortality' or 'los'")
    site_by = "careunit" if site_by == "default" else site_by
    if site_by not in ("careunit", "all"):
        raise ValueError(f"mimic3: unknown site_by {site_by!r}; choose 'careunit' or 'all'")
    unknown = [c for c in channels if c not in ITEMIDS]
    if unknown:
        raise ValueError(f"mimic3: unknown channel(s) {unknown}; choose from {list(ITEMIDS)}")
    return site_by


def input_files(
    path: str | Path,
    *,
    task: str = "mortality",
    site_by: str = "default",
    channels=None,
    length=None,
    chunksize: int = 1_000_000,
) -> list[Path]:
    """The files ``build_sites`` reads (raises ``ValueError`` naming a missing table)."""
    folder = Path(path)
    return [
        find_table(folder, "icustays")[0],
        find_table(folder, "admissions")[0],
        *find_table(folder, "chartevents", parts=True),
    ]


def build_sites(
    path: str | Path,
    *,
    task: str = "mortality",
    site_by: str = "default",
    channels: tuple[str, ...] | None = None,
    length: int | None = None,
    chunksize: int = 1_000_000,
    progress: bool = False,
) -> list[SiteData]:
    """All sites of a MIMIC-III folder (no size filter): x [N, C, length or 24]."""
    folder = Path(path)
    channels = tuple(channels or DEFAULT_CHANNELS)
    site_by = _check(task, site_by, channels)
    length = int(length or DEFAULT_LENGTH)
    icu_path = find_table(folder, "icustays")[0]
    adm_path = find_table(folder, "admissions")[0]
    parts = find_table(folder, "chartevents", parts=True)

    # Stays, labels and sites ------------------------------------------------------------
    stays = read_csv_table(
        icu_path,
        ("icustay_id", "hadm_id", "intime", "los", "first_careunit"),
        dtype={"first_careunit": "string"},
    )
    stays = stays.dropna(subset=["icustay_id"]).drop_duplicates("icustay_id")
    stays["icustay_id"] = stays["icustay_id"].astype(np.int64)
    stays = stays.sort_values("icustay_id").reset_index(drop=True)
    intime = pd.to_datetime(stays["intime"], errors="coerce")
    if task == "mortality":
        adm = read_csv_table(adm_path, ("hadm_id", "hospital_expire_flag"))
        adm = adm.dropna(subset=["hadm_id"]).drop_duplicates("hadm_id")
        flag = pd.Series(
            pd.to_numeric(adm["hospital_expire_flag"], errors="coerce").to_numpy(),
            index=adm["hadm_id"].astype(np.int64),
        )
        hadm = pd.to_numeric(stays["hadm_id"], errors="coerce").fillna(-1).astype(np.int64)
        labels = flag.reindex(hadm).to_numpy(np.float64, copy=True)
        labels[~np.isin(labels, (0.0, 1.0))] = np.nan
    else:
        los = pd.to_numeric(stays["los"], errors="coerce").to_numpy(np.float64)
        labels = np.where(np.isnan(los), np.nan, (los > LOS_THRESHOLD_DAYS).astype(np.float64))
    if site_by == "careunit":
        sites = [
            None if (u is None or pd.isna(u) or not str(u).strip()) else str(u).strip()
            for u in stays["first_careunit"].tolist()
        ]
    else:
        sites = ["all"] * len(stays)
    reasons = [None if pd.notna(t) else "no_intime" for t in intime]

    # Chart events -> hourly grid ---------------------------------------------------------
    item_channel = {item: ci for ci, ch in enumerate(channels) for item in ITEMIDS[ch]}
    wanted = np.array(sorted(item_channel), dtype=np.int64)
    lookup_items = pd.Index(wanted)
    channel_of = np.array([item_channel[i] for i in wanted], dtype=np.int64)
    fahrenheit = np.isin(wanted, list(FAHRENHEIT_ITEMIDS))
    index = pd.Index(stays["icustay_id"].to_numpy())
    intime_ns = intime.to_numpy(dtype="datetime64[ns]")
    acc = GridAccumulator(len(stays), len(channels), length)
    implausible: Counter = Counter()
    hour_ns = np.timedelta64(3600 * 10**9, "ns")
    for part in parts:
        rows = 0
        for chunk in read_csv_table(
            part,
            ("icustay_id", "itemid", "charttime", "valuenum"),
            optional=("error",),
            chunksize=chunksize,
        ):
            rows += len(chunk)
            item = pd.to_numeric(chunk["itemid"], errors="coerce").fillna(-1).astype(np.int64)
            k = lookup_items.get_indexer(item)
            sel = k >= 0
            if "error" in chunk:
                sel &= pd.to_numeric(chunk["error"], errors="coerce").fillna(0).to_numpy() != 1
            if not sel.any():
                continue
            sub = chunk.loc[sel]
            k = k[sel]
            pos = index.get_indexer(pd.to_numeric(sub["icustay_id"], errors="coerce"))
            charttime = pd.to_datetime(sub["charttime"], errors="coerce").to_numpy(dtype="datetime64[ns]")
            value = pd.to_numeric(sub["valuenum"], errors="coerce").to_numpy(np.float64)
            value = np.where(fahrenheit[k], (value - 32.0) * 5.0 / 9.0, value)
            ok = (pos >= 0) & ~np.isnat(charttime)
            delta = np.full(len(sub), -1, dtype=np.int64)
            delta[ok] = (charttime[ok] - intime_ns[pos[ok]]) // hour_ns  # floor division
            ok &= (delta >= 0) & (delta < length)
            ch_idx = channel_of[k]
            for ci, ch in enumerate(channels):
                m = ok & (ch_idx == ci)
                keep, bad = filter_ranges(value[m], *VITAL_RANGES[ch])
                implausible[ch] += bad
                acc.add(pos[m][keep], ci, delta[m][keep], value[m][keep])
        log(progress, f"mimic3: {rows} rows of {part.name} read")

    return assemble_sites(
        source="mimic3",
        task=task,
        site_by=site_by,
        channels=channels,
        stay_ids=stays["icustay_id"].to_numpy(),
        sites=sites,
        labels=labels,
        values=acc.means(),
        reasons=reasons,
        meta={
            "grid": f"{length} hourly steps from ICU intime",
            "implausible_values": {c: int(implausible[c]) for c in channels},
        },
    )


def load_mimic3(path: str | Path, *, min_site_records: int = 20, **options) -> list[SiteData]:
    """``build_sites`` then drop (and warn about) sites below ``min_site_records``."""
    return drop_small_sites(build_sites(path, **options), min_site_records, source="mimic3")
