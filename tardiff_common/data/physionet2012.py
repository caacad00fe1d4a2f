"""PhysioNet/CinC Challenge 2012: 6 vital signs x 48 hourly steps per ICU patient.

Input (``path`` = folder): for each requested set ``s`` in ``sets`` (default ``("a",)``)

* the records, ``set-s.tar.gz`` (read in memory with ``tarfile``, nothing is extracted) or a
  folder ``set-s/`` of ``<RecordID>.txt`` files; each file is ``Time,Parameter,Value`` with time
  ``hh:mm`` from ICU admission (first 48 h), static rows at ``00:00`` (``RecordID``, ``Age``,
  ``Gender``, ``Height``, ``ICUType``, ``Weight``) and ``-1`` meaning missing;
* ``Outcomes-s.txt``: ``RecordID, SAPS-I, SOFA, Length_of_stay, Survival, In-hospital_death``.

All records are concatenated into one long table and gridded with one vectorized pass.

Channels (default ``DEFAULT_CHANNELS``; any time-series parameter name can be chosen):
``HR`` (beats/min), ``NISysABP`` / ``NIDiasABP`` / ``NIMAP`` (non-invasive blood pressure,
mmHg), ``Temp`` (°C), ``RespRate`` (breaths/min). Values outside ``VITAL_RANGES`` are discarded
and counted in ``meta["implausible_values"]`` (the data hold e.g. zero blood pressures and
implausible temperatures).

Grid: ``L = 48`` hourly steps; an observation at ``hh:mm`` goes to step ``hh`` if
``0 <= hh < L`` (``length`` configurable); values in the same step are averaged. Gaps: forward
fill, backward fill of the leading gap, per-channel source median for a channel never measured
in a record (``mask`` False wherever a value was filled).

Labels: ``"mortality"`` = ``In-hospital_death``; ``"los"`` = ``Length_of_stay > 3`` (days;
``Length_of_stay < 0`` = unknown, dropped). Sites: ``site_by="icutype"`` (default):
``icu1_coronary``, ``icu2_cardiac_surgery``, ``icu3_medical``, ``icu4_surgical``;
``"set"`` (``set-a``, ``set-b``) or ``"all"``.

Output per site: ``x`` float32 [N, C, L], ``y`` int64 [N], ``mask`` bool [N, C, L], ``meta``
with ``stay_ids`` (``RecordID``), ``dropped`` / ``dropped_total`` (``unknown_outcome``,
``no_site``, ``no_vitals``), ``implausible_values``, ``fill_median``, ``sets``.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from tardiff_common.data.contract import SiteData
from tardiff_common.data.registry import (
    READ_ERRORS,
    GridAccumulator,
    assemble_sites,
    drop_small_sites,
    filter_ranges,
    log,
    read_csv_table,
)

__all__ = [
    "ICU_TYPES",
    "VITAL_RANGES",
    "DEFAULT_CHANNELS",
    "DEFAULT_LENGTH",
    "LOS_THRESHOLD_DAYS",
    "input_files",
    "read_records",
    "build_sites",
    "load_physionet2012",
]

#: ICUType code -> site name.
ICU_TYPES: dict[int, str] = {
    1: "icu1_coronary",
    2: "icu2_cardiac_surgery",
    3: "icu3_medical",
    4: "icu4_surgical",
}

#: Plausible [low, high] per parameter (inclusive); values outside are discarded.
VITAL_RANGES: dict[str, tuple[float, float]] = {
    "HR": (20.0, 300.0),  # beats/min
    "NISysABP": (20.0, 300.0),  # mmHg
    "NIDiasABP": (5.0, 200.0),  # mmHg
    "NIMAP": (10.0, 250.0),  # mmHg
    "SysABP": (20.0, 300.0),  # mmHg (invasive)
    "DiasABP": (5.0, 200.0),  # mmHg (invasive)
    "MAP": (10.0, 250.0),  # mmHg (invasive)
    "Temp": (25.0, 45.0),  # °C
    "RespRate": (1.0, 80.0),  # breaths/min
    "SaO2": (40.0, 100.0),  # %
}

DEFAULT_CHANNELS: tuple[str, ...] = ("HR", "NISysABP", "NIDiasABP", "NIMAP", "Temp", "RespRate")
DEFAULT_LENGTH = 48
LOS_THRESHOLD_DAYS = 3.0
_STATIC = ("RecordID", "ICUType")
_BLANK_LINES = re.compile(rb"\n\s*\n")
_LINE_START = re.compile(rb"(?m)^")


def _set_names(sets) -> tuple[str, ...]:
    if isinstance(sets, str):
        sets = (sets,)
    names = tuple(str(s).lower().removeprefix("set-") for s in sets)
    if not names:
        raise ValueError("physionet2012: sets must name at least one set, e.g. ('a',)")
    return names


def _records_source(folder: Path, name: str) -> Path:
    tar = folder / f"set-{name}.tar.gz"
    if tar.is_file():
        return tar
    directory = folder / f"set-{name}"
    if directory.is_dir():
        return directory
    raise ValueError(f"missing records: expected {str(tar)!r} or a folder {str(directory)!r} of .txt files")


def _outcomes_path(folder: Path, name: str) -> Path:
    path = folder / f"Outcomes-{name}.txt"
    if not path.is_file():
        raise ValueError(f"missing table: expected {str(path)!r}")
    return path


def input_files(
    path: str | Path,
    *,
    task: str = "mortality",
    site_by: str = "default",
    channels=None,
    length=None,
    sets=("a",),
) -> list[Path]:
    """The files ``build_sites`` reads (raises ``ValueError`` naming a missing file)."""
    folder = Path(path)
    files: list[Path] = []
    for name in _set_names(sets):
        src = _records_source(folder, name)
        files.extend(sorted(src.glob("*.txt")) if src.is_dir() else [src])
        files.append(_outcomes_path(folder, name))
    return files


# ---------------------------------------------------------------------------------------------
# Reading: every record file into one long table
# ---------------------------------------------------------------------------------------------


def _iter_texts(src: Path):
    """(member name, bytes) of each ``.txt`` record in a tar.gz or a folder."""
    if src.is_dir():
        for p in sorted(src.glob("*.txt")):
            yield p.name, p.read_bytes()
        return
    try:
        with tarfile.open(src, mode="r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".txt"):
                    fh = tar.extractfile(member)
                    yield member.name, fh.read() if fh is not None else b""
    except READ_ERRORS as err:
        raise ValueError(f"cannot read {str(src)!r}: {type(err).__name__}: {err}") from err


def read_records(src: Path, *, progress: bool = False) -> pd.DataFrame:
    """Long table of all records of one set: ``record`` (file number), ``file``, ``minute``,
    ``parameter``, ``value`` (float; rows with value -1 or unparsable are dropped)."""
    bodies: list[bytes] = []
    names: list[str] = []
    for i, (name, data) in enumerate(_iter_texts(src)):
        body = data.replace(b"\r", b"")
        if body[:5].lower() == b"time,":  # header line
            body = body.partition(b"\n")[2]
        body = _BLANK_LINES.sub(b"\n", body).strip(b"\n")
        if body:
            # "hh:mm,Parameter,Value" -> "<file number>,hh,mm,Parameter,Value"
            bodies.append(_LINE_START.sub(b"%d," % i, body.replace(b":", b",")) + b"\n")
        names.append(name)
        if progress and (i + 1) % 1000 == 0:
            log(progress, f"physionet2012: {i + 1} records read from {src.name}")
    if not names:
        raise ValueError(f"{str(src)!r} holds no .txt record files")
    try:
        long = pd.read_csv(
            io.BytesIO(b"".join(bodies)),
            header=None,
            names=["record", "hour", "minute", "parameter", "value"],
            dtype={"record": np.int64, "parameter": "category"},
        )
    except (*READ_ERRORS, ValueError) as err:
        raise ValueError(f"cannot parse the records of {str(src)!r}: {err}") from err
    hour = pd.to_numeric(long["hour"], errors="coerce").to_numpy(np.float64)
    minute = pd.to_numeric(long["minute"], errors="coerce").to_numpy(np.float64)
    value = pd.to_numeric(long["value"], errors="coerce").to_numpy(np.float64)
    out = pd.DataFrame(
        {
            "record": long["record"].to_numpy(),
            "minute": hour * 60 + minute,
            "parameter": long["parameter"].astype(str).str.strip().to_numpy(dtype=object),
            "value": value,
        }
    )
    out = out[np.isfinite(out["value"].to_numpy()) & (out["value"].to_numpy() != -1)]
    out.attrs["files"] = names
    return out.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Sites
# ---------------------------------------------------------------------------------------------


def build_sites(
    path: str | Path,
    *,
    task: str = "mortality",
    site_by: str = "default",
    channels: tuple[str, ...] | None = None,
    length: int | None = None,
    sets=("a",),
    progress: bool = False,
) -> list[SiteData]:
    """All sites of the requested sets (no size filter): x [N, C, length or 48]."""
    folder = Path(path)
    if task not in ("mortality", "los"):
        raise ValueError(f"physionet2012: unknown task {task!r}; choose 'mortality' or 'los'")
    site_by = "icutype" if site_by == "default" else site_by
    if site_by not in ("icutype", "set", "all"):
        raise ValueError(f"physionet2012: unknown site_by {site_by!r}; choose 'icutype', 'set' or 'all'")
    channels = tuple(channels or DEFAULT_CHANNELS)
    length = int(length or DEFAULT_LENGTH)

    frames = []
    for name in _set_names(sets):
        src = _records_source(folder, name)
        outcomes_path = _outcomes_path(folder, name)
        long = read_records(src, progress=progress)
        files = long.attrs["files"]
        log(progress, f"physionet2012: set-{name}: {len(files)} records, {len(long)} rows")
        # One row per record: RecordID (file stem if absent), ICUType.
        static = long[long["parameter"].isin(_STATIC) & (long["minute"] == 0)]
        static = static.drop_duplicates(["record", "parameter"]).pivot(
            index="record", columns="parameter", values="value"
        )
        records = pd.DataFrame({"record": np.arange(len(files))})
        stems = pd.to_numeric(pd.Series([Path(f).stem for f in files]), errors="coerce")
        rid = static.reindex(records["record"]).get("RecordID")
        records["record_id"] = rid.to_numpy() if rid is not None else np.full(len(files), np.nan)
        records["record_id"] = records["record_id"].fillna(pd.Series(stems.to_numpy()))
        icu = static.reindex(records["record"]).get("ICUType")
        records["icutype"] = icu.to_numpy() if icu is not None else np.nan
        records["set"] = f"set-{name}"
        outcomes = read_csv_table(outcomes_path, ("RecordID", "Length_of_stay", "In-hospital_death"))
        outcomes = outcomes.dropna(subset=["recordid"]).drop_duplicates("recordid")
        out = outcomes.set_index(outcomes["recordid"].astype(np.int64))
        rid_int = records["record_id"].fillna(-1).astype(np.int64)
        if task == "mortality":
            lab = (
                pd.to_numeric(out["in-hospital_death"], errors="coerce")
                .reindex(rid_int)
                .to_numpy(np.float64, copy=True)
            )
            lab[~np.isin(lab, (0.0, 1.0))] = np.nan
        else:
            los = pd.to_numeric(out["length_of_stay"], errors="coerce").reindex(rid_int).to_numpy(np.float64, copy=True)
            los[los < 0] = np.nan
            lab = np.where(np.isnan(los), np.nan, (los > LOS_THRESHOLD_DAYS).astype(np.float64))
        records["label"] = lab
        frames.append((records, long))

    # Stack sets, then grid all observations in one pass.
    offset = 0
    all_records, all_obs = [], []
    for records, long in frames:
        records = records.assign(row=records["record"] + offset)
        obs = long[long["parameter"].isin(channels)]
        obs = obs.assign(row=obs["record"].to_numpy() + offset)
        offset += len(records)
        all_records.append(records)
        all_obs.append(obs)
    records = pd.concat(all_records, ignore_index=True)
    obs = pd.concat(all_obs, ignore_index=True)

    step = np.floor(obs["minute"].to_numpy() / 60.0)
    in_window = (step >= 0) & (step < length)
    acc = GridAccumulator(len(records), len(channels), length)
    implausible: Counter = Counter()
    parameter = obs["parameter"].to_numpy()
    row = obs["row"].to_numpy()
    value = obs["value"].to_numpy()
    for ci, ch in enumerate(channels):
        m = in_window & (parameter == ch)
        keep, bad = filter_ranges(value[m], *VITAL_RANGES.get(ch, (-np.inf, np.inf)))
        implausible[ch] += bad
        acc.add(row[m][keep], ci, step[m][keep].astype(np.int64), value[m][keep])

    if site_by == "icutype":
        sites = [ICU_TYPES.get(int(t)) if pd.notna(t) else None for t in records["icutype"].tolist()]
    elif site_by == "set":
        sites = records["set"].tolist()
    else:
        sites = ["all"] * len(records)

    return assemble_sites(
        source="physionet2012",
        task=task,
        site_by=site_by,
        channels=channels,
        stay_ids=records["record_id"].fillna(-1).astype(np.int64).to_numpy(),
        sites=sites,
        labels=records["label"].to_numpy(np.float64),
        values=acc.means(),
        reasons=[None] * len(records),
        meta={
            "grid": f"{length} hourly steps from ICU admission",
            "sets": [f"set-{s}" for s in _set_names(sets)],
            "implausible_values": {c: int(implausible[c]) for c in channels},
        },
    )


def load_physionet2012(path: str | Path, *, min_site_records: int = 20, **options) -> list[SiteData]:
    """``build_sites`` then drop (and warn about) sites below ``min_site_records``."""
    return drop_small_sites(build_sites(path, **options), min_site_records, source="physionet2012")
