"""eICU Collaborative Research Database: two loaders, one per available form of the data.

Both yield one ``SiteData`` per site with ``x`` float32 [N, C, L] (gaps filled: forward fill,
backward fill of the leading gap, per-channel source median for a channel never observed in a
stay), ``y`` int64 [N], ``mask`` bool [N, C, L] (True = bin held a real observation) and
``meta`` (``source``, ``task``, ``site_by``, ``stay_ids`` = ``patientunitstayid``, ``dropped``
/ ``dropped_total`` = counts of dropped stays by reason, ``implausible_values`` = count of
values rejected by the plausibility ranges per channel, ``fill_median``).

**(a) Full eICU-CRD schema** (``source="eicu"``; ``path`` = folder holding the tables):

* ``patient.csv[.gz]``: ``patientunitstayid``, ``hospitalid``, ``unitdischargeoffset``
  (minutes from unit admission), ``hospitaldischargestatus`` (``Alive`` / ``Expired`` / empty).
* ``hospital.csv[.gz]``: ``hospitalid``, ``region`` (only read for ``site_by="region"``).
* ``vitalPeriodic.csv[.gz]`` (any letter case): ``patientunitstayid``, ``observationoffset``
  (minutes from unit admission), and the channel columns, by default ``heartrate`` (beats/min),
  ``respiration`` (breaths/min), ``sao2`` (%). Read in chunks, only the needed columns.

Grid: ``L = 288`` five-minute bins over the first 24 h of the unit stay: an observation at
offset ``t`` minutes goes to bin ``floor(t / 5)`` if ``0 <= t < 5 L`` (``length`` changes L,
the bin width stays 5 min); values in the same bin are averaged. Values outside
``VITAL_RANGES`` (physiologically impossible) are discarded before binning.

**(b) YAIB hourly extract** (``source="eicu_yaib"``; ``path`` = the ``eicu_demo`` folder):
``yaib_hourly/<extract>/dyn.parquet`` (``stay_id`` = ``patientunitstayid``, ``time`` a timedelta
from unit admission on whole hours, variables such as ``hr`` (/min), ``resp`` (/min),
``o2sat`` (%), ``sbp``/``dbp``/``map`` (mmHg), ``temp`` (°C)), joined with ``patient.csv.gz``
(hospitalid, discharge status, unitdischargeoffset) and ``hospital.csv.gz`` (region).
Grid: ``L = 24`` hourly steps, hour ``h`` in ``[0, L)`` (``length`` configurable); values
outside ``YAIB_RANGES`` are discarded. ``extract`` defaults to ``"mortality24"`` for
``task="mortality"`` and ``"los"`` for ``task="los"``.

Labels (both paths):

* ``"mortality"``: 1 if ``hospitaldischargestatus == "Expired"`` (in-hospital death), 0 if
  ``"Alive"``. Stays with an empty status are dropped and counted as ``"unknown_outcome"``
  (``unknown_status="drop"``, default) or counted as survivors (``unknown_status="alive"``,
  the convention behind the demo README's 9.3 % for mortality24).
* ``"los"``: 1 if ``unitdischargeoffset > 4320`` minutes (ICU stay longer than 3 days).

Sites: ``site_by="hospital"`` (names ``hospital_<id>``; default of ``eicu``), ``"region"``
(Midwest / Northeast / South / West / ``unknown`` for an empty region; default of
``eicu_yaib``) or ``"all"`` (one site). Stays without any observation in the window are dropped
(``"no_vitals"``). ``load_eicu`` / ``load_eicu_yaib`` also drop sites below
``min_site_records`` (with a warning); ``registry.load_sites`` is the usual entry point.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from tardiff_common.data.contract import SiteData
from tardiff_common.data.grid import GridAccumulator
from tardiff_common.data.sites import assemble_sites, drop_small_sites
from tardiff_common.data.tables import csv_columns, filter_ranges, find_table, log, read_csv_table

__all__ = [
    "VITAL_RANGES",
    "YAIB_RANGES",
    "DEFAULT_CHANNELS",
    "YAIB_DEFAULT_CHANNELS",
    "BIN_MINUTES",
    "DEFAULT_LENGTH",
    "YAIB_DEFAULT_LENGTH",
    "LOS_THRESHOLD_MINUTES",
    "input_files",
    "build_sites",
    "load_eicu",
    "yaib_input_files",
    "build_yaib_sites",
    "load_eicu_yaib",
]

#: Plausible [low, high] per ``vitalPeriodic`` column (inclusive); values outside are discarded.
VITAL_RANGES: dict[str, tuple[float, float]] = {
    "heartrate": (20.0, 300.0),  # beats/min
    "respiration": (1.0, 80.0),  # breaths/min
    "sao2": (40.0, 100.0),  # % oxygen saturation
    "temperature": (25.0, 45.0),  # °C
    "systemicsystolic": (20.0, 300.0),  # mmHg
    "systemicdiastolic": (5.0, 200.0),  # mmHg
    "systemicmean": (10.0, 250.0),  # mmHg
}

#: Plausible [low, high] per YAIB hourly variable (inclusive); same physiology, YAIB names.
YAIB_RANGES: dict[str, tuple[float, float]] = {
    "hr": (20.0, 300.0),
    "resp": (1.0, 80.0),
    "o2sat": (40.0, 100.0),
    "sbp": (20.0, 300.0),
    "dbp": (5.0, 200.0),
    "map": (10.0, 250.0),
    "temp": (25.0, 45.0),
}

DEFAULT_CHANNELS: tuple[str, ...] = ("heartrate", "respiration", "sao2")
YAIB_DEFAULT_CHANNELS: tuple[str, ...] = ("hr", "resp", "o2sat", "sbp", "dbp", "map", "temp")
BIN_MINUTES = 5
DEFAULT_LENGTH = 288  # 24 h of 5-minute bins
YAIB_DEFAULT_LENGTH = 24  # 24 hourly steps
LOS_THRESHOLD_MINUTES = 3 * 24 * 60
YAIB_EXTRACTS = {"mortality": "mortality24", "los": "los"}

_PATIENT_COLUMNS = ("patientunitstayid", "hospitalid", "unitdischargeoffset", "hospitaldischargestatus")


# ---------------------------------------------------------------------------------------------
# Stays: labels and sites from patient.csv / hospital.csv
# ---------------------------------------------------------------------------------------------


def _site_by(site_by: str, default: str) -> str:
    site_by = default if site_by == "default" else site_by
    if site_by not in ("hospital", "region", "all"):
        raise ValueError(f"eICU: unknown site_by {site_by!r}; choose 'hospital', 'region' or 'all'")
    return site_by


def _check_task(task: str, unknown_status: str) -> None:
    if task not in ("mortality", "los"):
        raise ValueError(f"eICU: unknown task {task!r}; choose 'mortality' or 'los'")
    if unknown_status not in ("drop", "alive"):
        raise ValueError(f"eICU: unknown_status must be 'drop' or 'alive', got {unknown_status!r}")


def _read_stays(folder: Path, site_by: str) -> pd.DataFrame:
    """patient rows (one per ``patientunitstayid``) with a ``site`` column (None = unknown)."""
    patient_path = find_table(folder, "patient")[0]
    stays = read_csv_table(
        patient_path,
        _PATIENT_COLUMNS,
        dtype={"hospitaldischargestatus": "string"},
    )
    stays = stays.dropna(subset=["patientunitstayid"]).drop_duplicates("patientunitstayid")
    stays["patientunitstayid"] = stays["patientunitstayid"].astype(np.int64)
    hid = pd.to_numeric(stays["hospitalid"], errors="coerce")
    if site_by == "hospital":
        stays["site"] = [None if pd.isna(h) else f"hospital_{int(h)}" for h in hid]
    elif site_by == "region":
        hospital_path = find_table(folder, "hospital")[0]
        hospitals = read_csv_table(hospital_path, ("hospitalid", "region"), dtype={"region": "string"})
        hospitals = hospitals.dropna(subset=["hospitalid"]).drop_duplicates("hospitalid")
        region = pd.Series(hospitals["region"].to_numpy(), index=hospitals["hospitalid"].astype(np.int64))
        looked = region.reindex(hid.fillna(-1).astype(np.int64)).to_numpy(dtype=object)
        stays["site"] = [
            "unknown" if (r is None or pd.isna(r) or not str(r).strip()) else str(r).strip() for r in looked
        ]
    else:
        stays["site"] = "all"
    return stays.reset_index(drop=True)


def _labels(stays: pd.DataFrame, task: str, unknown_status: str) -> np.ndarray:
    """float [S]: 0/1 label, NaN = unknown (dropped later as ``unknown_outcome``)."""
    if task == "mortality":
        status = stays["hospitaldischargestatus"].astype("string").str.strip().str.lower()
        y = np.full(len(stays), np.nan)
        y[(status == "expired").fillna(False).to_numpy(bool)] = 1.0
        y[(status == "alive").fillna(False).to_numpy(bool)] = 0.0
        if unknown_status == "alive":
            y[np.isnan(y)] = 0.0
        return y
    offset = pd.to_numeric(stays["unitdischargeoffset"], errors="coerce").to_numpy(np.float64)
    return np.where(np.isnan(offset), np.nan, (offset > LOS_THRESHOLD_MINUTES).astype(np.float64))


# ---------------------------------------------------------------------------------------------
# (a) Full schema: vitalPeriodic, 5-minute bins
# ---------------------------------------------------------------------------------------------


def input_files(
    path: str | Path,
    *,
    task: str = "mortality",
    site_by: str = "default",
    channels=None,
    length=None,
    unknown_status: str = "drop",
    chunksize: int = 2_000_000,
) -> list[Path]:
    """The files ``build_sites`` reads (raises ``ValueError`` naming a missing table, or a
    ``data.channels`` name that is not a column of ``vitalPeriodic``, listing the available ones)."""
    folder = Path(path)
    files = [find_table(folder, "patient")[0], find_table(folder, "vitalPeriodic")[0]]
    if channels:
        available = [c for c in csv_columns(files[1]) if c not in ("patientunitstayid", "observationoffset")]
        _check_channels(channels, available, files[1])
    if _site_by(site_by, "hospital") == "region":
        files.append(find_table(folder, "hospital")[0])
    return files


def build_sites(
    path: str | Path,
    *,
    task: str = "mortality",
    site_by: str = "default",
    channels: tuple[str, ...] | None = None,
    length: int | None = None,
    unknown_status: str = "drop",
    chunksize: int = 2_000_000,
    progress: bool = False,
) -> list[SiteData]:
    """All sites of the full eICU schema (no size filter): x [N, C, length or 288]."""
    folder = Path(path)
    _check_task(task, unknown_status)
    site_by = _site_by(site_by, "hospital")
    channels = tuple(channels or DEFAULT_CHANNELS)
    length = int(length or DEFAULT_LENGTH)
    stays = _read_stays(folder, site_by)
    labels = _labels(stays, task, unknown_status)
    index = pd.Index(stays["patientunitstayid"].to_numpy())
    vital_path = find_table(folder, "vitalPeriodic")[0]
    log(progress, f"eicu: {len(stays)} stays in patient table; reading {vital_path.name}")

    acc = GridAccumulator(len(stays), len(channels), length)
    implausible: Counter = Counter()
    rows = 0
    for chunk in read_csv_table(vital_path, ("patientunitstayid", "observationoffset", *channels), chunksize=chunksize):
        rows += len(chunk)
        offset = pd.to_numeric(chunk["observationoffset"], errors="coerce").to_numpy(np.float64)
        with np.errstate(invalid="ignore"):
            step = np.floor(offset / BIN_MINUTES)
        pos = index.get_indexer(pd.to_numeric(chunk["patientunitstayid"], errors="coerce"))
        sel = (pos >= 0) & (offset >= 0) & (step < length)
        stay_sel, step_sel = pos[sel], step[sel].astype(np.int64)
        for ci, ch in enumerate(channels):
            v = pd.to_numeric(chunk[ch], errors="coerce").to_numpy(np.float64)[sel]
            low, high = VITAL_RANGES.get(ch, (-np.inf, np.inf))
            keep, bad = filter_ranges(v, low, high)
            implausible[ch] += bad
            acc.add(stay_sel[keep], ci, step_sel[keep], v[keep])
        log(progress, f"eicu: {rows} rows of {vital_path.name} read")

    return assemble_sites(
        source="eicu",
        task=task,
        site_by=site_by,
        channels=channels,
        stay_ids=stays["patientunitstayid"].to_numpy(),
        sites=stays["site"].tolist(),
        labels=labels,
        values=acc.means(),
        reasons=[None] * len(stays),
        meta={
            "grid": f"{length} bins of {BIN_MINUTES} min from unit admission",
            "implausible_values": {c: int(implausible[c]) for c in channels},
            "unknown_status": unknown_status,
        },
    )


def load_eicu(path: str | Path, *, min_site_records: int = 20, **options) -> list[SiteData]:
    """``build_sites`` then drop (and warn about) sites below ``min_site_records``."""
    return drop_small_sites(build_sites(path, **options), min_site_records, source="eicu")


# ---------------------------------------------------------------------------------------------
# (b) YAIB hourly extract
# ---------------------------------------------------------------------------------------------


def _extract_name(task: str, extract: str | None) -> str:
    return extract or YAIB_EXTRACTS.get(task, "mortality24")


def yaib_input_files(
    path: str | Path,
    *,
    task: str = "mortality",
    site_by: str = "default",
    channels=None,
    length=None,
    extract: str | None = None,
    unknown_status: str = "drop",
) -> list[Path]:
    """The files ``build_yaib_sites`` reads. Raises ``ValueError`` naming a missing file, a
    ``data.channels`` name that is not a variable of the extract (listing the available ones), or
    a ``data.length`` beyond the hours the extract covers."""
    folder = Path(path)
    dyn = folder / "yaib_hourly" / _extract_name(task, extract) / "dyn.parquet"
    if not dyn.is_file():
        raise ValueError(f"missing table: expected {str(dyn)!r} (YAIB hourly extract)")
    if channels:
        names = _dyn_columns(dyn)
        _check_channels(channels, [c for c in names if c not in ("stay_id", "time")], dyn)
    if length:
        hours = _dyn_hours(dyn)
        if int(length) > hours:
            raise ValueError(
                f"eicu_yaib: data.length={length} cannot be honoured: {str(dyn)!r} covers {hours} hourly steps "
                f"(hours 0..{hours - 1}); choose data.length <= {hours}"
            )
    files = [dyn, find_table(folder, "patient")[0]]
    if _site_by(site_by, "region") == "region":
        files.append(find_table(folder, "hospital")[0])
    return files


def _check_channels(channels, available: list[str], path: Path) -> None:
    unknown = [c for c in channels if c not in available]
    if unknown:
        raise ValueError(
            f"unknown variable(s) {unknown} in data.channels: {str(path)!r} has {', '.join(sorted(available))}"
        )


def _dyn_columns(path: Path) -> list[str]:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except (OSError, pyarrow.ArrowException) as err:
        raise ValueError(f"cannot read {str(path)!r}: {type(err).__name__}: {err}") from err


def _dyn_hours(path: Path) -> int:
    """Number of hourly steps the extract covers: last whole hour of ``time`` + 1."""
    import pyarrow

    try:
        time = pd.read_parquet(path, columns=["time"])["time"]
    except (OSError, pyarrow.ArrowException, KeyError) as err:
        raise ValueError(f"cannot read column 'time' of {str(path)!r}: {type(err).__name__}: {err}") from err
    return int(pd.to_timedelta(time).max() // pd.Timedelta(hours=1)) + 1


def _read_dyn(path: Path, channels: tuple[str, ...]) -> pd.DataFrame:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (OSError, pyarrow.ArrowException) as err:
        raise ValueError(f"cannot read {str(path)!r}: {type(err).__name__}: {err}") from err
    missing = [c for c in ("stay_id", "time", *channels) if c not in names]
    if missing:
        raise ValueError(f"{str(path)!r} lacks column(s) {missing}; found {names}")
    try:
        return pd.read_parquet(path, columns=["stay_id", "time", *channels])
    except (OSError, pyarrow.ArrowException) as err:
        raise ValueError(f"cannot read {str(path)!r}: {type(err).__name__}: {err}") from err


def build_yaib_sites(
    path: str | Path,
    *,
    task: str = "mortality",
    site_by: str = "default",
    channels: tuple[str, ...] | None = None,
    length: int | None = None,
    extract: str | None = None,
    unknown_status: str = "drop",
    progress: bool = False,
) -> list[SiteData]:
    """All sites of a YAIB hourly eICU extract (no size filter): x [N, C, length or 24]."""
    folder = Path(path)
    _check_task(task, unknown_status)
    site_by = _site_by(site_by, "region")
    channels = tuple(channels or YAIB_DEFAULT_CHANNELS)
    length = int(length or YAIB_DEFAULT_LENGTH)
    extract = _extract_name(task, extract)
    dyn_path = yaib_input_files(folder, task=task, site_by=site_by, extract=extract)[0]
    dyn = _read_dyn(dyn_path, channels)
    log(progress, f"eicu_yaib: {len(dyn)} hourly rows, {dyn['stay_id'].nunique()} stays in {dyn_path}")

    time_col = dyn["time"]
    if pd.api.types.is_timedelta64_dtype(time_col):
        hours = (time_col / pd.Timedelta(hours=1)).to_numpy(np.float64)
    else:  # plain numbers: hours
        hours = pd.to_numeric(time_col, errors="coerce").to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        step = np.floor(hours)

    stay_ids = np.sort(dyn["stay_id"].dropna().astype(np.int64).unique())
    patients = _read_stays(folder, site_by).set_index("patientunitstayid")
    in_patient = np.isin(stay_ids, patients.index.to_numpy())
    stays = patients.reindex(stay_ids).reset_index()
    labels = _labels(stays, task, unknown_status)
    reasons = [None if ok else "not_in_patient_table" for ok in in_patient]

    pos = pd.Index(stay_ids).get_indexer(pd.to_numeric(dyn["stay_id"], errors="coerce"))
    sel = (pos >= 0) & (step >= 0) & (step < length)
    stay_sel, step_sel = pos[sel], step[sel].astype(np.int64)
    acc = GridAccumulator(len(stay_ids), len(channels), length)
    implausible: Counter = Counter()
    for ci, ch in enumerate(channels):
        v = pd.to_numeric(dyn[ch], errors="coerce").to_numpy(np.float64)[sel]
        low, high = YAIB_RANGES.get(ch, (-np.inf, np.inf))
        keep, bad = filter_ranges(v, low, high)
        implausible[ch] += bad
        acc.add(stay_sel[keep], ci, step_sel[keep], v[keep])

    return assemble_sites(
        source="eicu_yaib",
        task=task,
        site_by=site_by,
        channels=channels,
        stay_ids=stay_ids,
        sites=stays["site"].tolist(),
        labels=labels,
        values=acc.means(),
        reasons=reasons,
        meta={
            "grid": f"{length} hourly steps from unit admission",
            "extract": extract,
            "implausible_values": {c: int(implausible[c]) for c in channels},
            "unknown_status": unknown_status,
        },
    )


def load_eicu_yaib(path: str | Path, *, min_site_records: int = 20, **options) -> list[SiteData]:
    """``build_yaib_sites`` then drop (and warn about) sites below ``min_site_records``."""
    return drop_small_sites(build_yaib_sites(path, **options), min_site_records, source="eicu_yaib")
