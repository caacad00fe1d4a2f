"""PhysioNet/CinC Challenge 2012: 6 vital signs x 48 hourly steps per ICU patient.

Input (``path`` = folder): for each requested set ``s`` in ``sets`` (default ``("a",)``)

* the records, ``set-s.tar.gz`` (read in memory with ``tarfile``, nothing is extracted) or a
  folder ``set-s/`` of ``<RecordID>.txt`` files; each file is ``Time,Parameter,Value`` with time
  ``hh:mm`` from ICU admission (first 48 h), static rows at ``00:00`` (``RecordID``, ``Age``,
  ``Gender``, ``Height``, ``ICUType``, ``Weight``) and ``-1`` meaning missing;
* ``Outcomes-s.txt``: ``RecordID, SAPS-I, SOFA, Length_of_stay, Survival, In-hospital_death``.

All records are concatenated into one long table and gridded with one vectorized pass.

Channels (default ``DEFAULT_CHANNELS``; any of the 37 time-series parameters in
``TIME_SERIES_PARAMETERS`` can be chosen, e.g. ``GCS``, ``Lactate``, ``Urine``; another name is
refused with the list of available ones):
``HR`` (beats/min), ``NISysABP`` / ``NIDiasABP`` / ``NIMAP`` (non-invasive blood pressure,
mmHg), ``Temp`` (°C), ``RespRate`` (breaths/min). Values outside ``VITAL_RANGES`` are discarded
and counted in ``meta["implausible_values"]`` (the data hold e.g. zero blood pressures and
implausible temperatures).

Grid: ``L = 48`` hourly steps; an observation at ``hh:mm`` goes to step ``hh`` if
``0 <= hh < L`` (``length`` configurable up to ``MAX_LENGTH`` = 48, the hours the records
cover; a longer ``length`` is refused, never padded); values in the same step are averaged.
Gaps: forward fill, backward fill of the leading gap, a provisional per-channel source median
for a channel never measured in a record, replaced after the split by the owning site's
training median (``data/impute.py``); ``mask`` is False wherever a value was filled.

Faulty input: a record file that is not UTF-8 or holds a line without exactly three fields is
reported by file name and line (``on_bad_record="skip"``, the default: warned and dropped as
``"unreadable_record"``; ``"error"``: a ``ValueError``). Outcome values other than 0/1 (empty,
NaN, 2, ...) are counted and warned about and their records dropped as ``"invalid_label"``
(``invalid_labels="drop"``, the default) or refused (``"error"``).

Labels: ``"mortality"`` = ``In-hospital_death``; ``"los"`` = ``Length_of_stay > 3`` (days;
``Length_of_stay < 0`` = unknown, dropped as ``"unknown_outcome"``, like a record without an
outcome row). Sites: ``site_by="icutype"`` (default):
``icu1_coronary``, ``icu2_cardiac_surgery``, ``icu3_medical``, ``icu4_surgical``;
``"set"`` (``set-a``, ``set-b``) or ``"all"``.

Output per site: ``x`` float32 [N, C, L], ``y`` int64 [N], ``mask`` bool [N, C, L], ``meta``
with ``stay_ids`` (``RecordID``), ``dropped`` / ``dropped_total`` (``unknown_outcome``,
``invalid_label``, ``unreadable_record``, ``no_site``, ``no_vitals``), ``implausible_values``,
``fill_median``, ``sets``, ``bad_records`` ({file: reason}).
"""

from __future__ import annotations

import io
import re
import tarfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from tardiff_common.data.contract import SiteData
from tardiff_common.data.grid import GridAccumulator
from tardiff_common.data.sites import assemble_sites, drop_small_sites
from tardiff_common.data.tables import READ_ERRORS, filter_ranges, log, read_csv_table

__all__ = [
    "ICU_TYPES",
    "VITAL_RANGES",
    "DEFAULT_CHANNELS",
    "DEFAULT_LENGTH",
    "MAX_LENGTH",
    "TIME_SERIES_PARAMETERS",
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
MAX_LENGTH = 48  # the records cover the first 48 h of the ICU stay

#: The time-series parameters of the challenge (``Weight`` is also a static row at 00:00).
TIME_SERIES_PARAMETERS: tuple[str, ...] = (
    "Albumin", "ALP", "ALT", "AST", "Bilirubin", "BUN", "Cholesterol", "Creatinine", "DiasABP", "FiO2",
    "GCS", "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "Mg", "MAP", "MechVent", "Na", "NIDiasABP",
    "NIMAP", "NISysABP", "PaCO2", "PaO2", "pH", "Platelets", "RespRate", "SaO2", "SysABP", "Temp",
    "TroponinI", "TroponinT", "Urine", "WBC", "Weight",
)
ON_BAD_RECORD = ("skip", "error")
INVALID_LABELS = ("drop", "error")
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
    on_bad_record: str = "skip",
    invalid_labels: str = "drop",
) -> list[Path]:
    """The files ``build_sites`` reads (raises ``ValueError`` naming a missing file, or an unknown
    channel, a too long ``length`` or an unknown option value, before anything is read)."""
    check_request(channels, length, on_bad_record=on_bad_record, invalid_labels=invalid_labels)
    folder = Path(path)
    files: list[Path] = []
    for name in _set_names(sets):
        src = _records_source(folder, name)
        files.extend(sorted(src.glob("*.txt")) if src.is_dir() else [src])
        files.append(_outcomes_path(folder, name))
    return files


def check_request(channels, length, *, on_bad_record: str = "skip", invalid_labels: str = "drop") -> None:
    """Refuse what the records cannot honour, naming the config key (``data.channels``,
    ``data.length``) and the choices."""
    unknown = [c for c in (channels or ()) if c not in TIME_SERIES_PARAMETERS]
    if unknown:
        raise ValueError(
            f"physionet2012: unknown variable(s) {unknown} in data.channels; available: "
            + ", ".join(TIME_SERIES_PARAMETERS)
        )
    if length is not None and not 2 <= int(length) <= MAX_LENGTH:
        raise ValueError(
            f"physionet2012: data.length={length} cannot be honoured: the records hold the first {MAX_LENGTH} h "
            f"on an hourly grid, so data.length must be between 2 and {MAX_LENGTH} (0 = {DEFAULT_LENGTH})"
        )
    if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(f"physionet2012: on_bad_record must be one of {ON_BAD_RECORD}, got {on_bad_record!r}")
    if invalid_labels not in INVALID_LABELS:
        raise ValueError(f"physionet2012: invalid_labels must be one of {INVALID_LABELS}, got {invalid_labels!r}")


# ---------------------------------------------------------------------------------------------
# Reading: every record file into one long table
# ---------------------------------------------------------------------------------------------


def _record_body(data: bytes) -> tuple[bytes, str | None]:
    """(``hh:mm,Parameter,Value`` lines without header and blank lines, problem or None).

    The problem names the real line of the file: a byte that is not UTF-8, or a line that does
    not have exactly three comma-separated fields.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        return b"", f"line {line}: byte 0x{data[err.start]:02x} is not UTF-8"
    lines = data.replace(b"\r", b"").split(b"\n")
    start = 1 if lines and lines[0][:5].lower() == b"time," else 0
    kept = [ln for ln in lines[start:] if ln.strip()]
    body = b"\n".join(kept)
    if body.count(b",") != 2 * len(kept):  # fast check; locate the line only when it fails
        for number, ln in enumerate(lines[start:], start=start + 1):
            if ln.strip() and ln.count(b",") != 2:
                shown = ln.decode("utf-8")[:80]
                return b"", f"line {number}: expected 'hh:mm,Parameter,Value', got {shown!r}"
    return body, None


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


def read_records(src: Path, *, progress: bool = False, on_bad_record: str = "skip") -> pd.DataFrame:
    """Long table of all records of one set: ``record`` (file number), ``minute``, ``parameter``,
    ``value`` (float; rows with value -1 or unparsable are dropped).

    ``attrs["files"]``: file names in record order; ``attrs["bad_records"]``: {file: problem} of
    the files that were skipped (``on_bad_record="skip"``, warned once); with ``"error"`` the first
    one raises ``ValueError`` naming the file and its line.
    """
    bodies: list[bytes] = []
    names: list[str] = []
    bad: dict[str, str] = {}
    for i, (name, data) in enumerate(_iter_texts(src)):
        names.append(name)
        body, problem = _record_body(data)
        if problem is not None:
            if on_bad_record == "error":
                raise ValueError(f"cannot parse record file {name!r} in {str(src)!r}, {problem}")
            bad[name] = problem
        elif body:
            # "hh:mm,Parameter,Value" -> "<file number>,hh,mm,Parameter,Value"
            bodies.append(_LINE_START.sub(b"%d," % i, body.replace(b":", b",")) + b"\n")
        if progress and (i + 1) % 1000 == 0:
            log(progress, f"physionet2012: {i + 1} records read from {src.name}")
    if not names:
        raise ValueError(f"{str(src)!r} holds no .txt record files")
    if bad:
        listing = "; ".join(f"{k}: {v}" for k, v in list(bad.items())[:10])
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        warnings.warn(
            f"physionet2012: skipped {len(bad)} unreadable record file(s) in {str(src)!r}: {listing}{more}",
            stacklevel=3,
        )
    try:
        long = pd.read_csv(
            io.BytesIO(b"".join(bodies)),
            header=None,
            names=["record", "hour", "minute", "parameter", "value"],
            dtype={"record": np.int64, "parameter": "category"},
        )
    except pd.errors.EmptyDataError:
        long = pd.DataFrame({"record": np.zeros(0, np.int64), "hour": [], "minute": [], "parameter": [], "value": []})
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
    out.attrs["bad_records"] = bad
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
    on_bad_record: str = "skip",
    invalid_labels: str = "drop",
    progress: bool = False,
) -> list[SiteData]:
    """All sites of the requested sets (no size filter): x [N, C, length or 48]."""
    check_request(channels, length, on_bad_record=on_bad_record, invalid_labels=invalid_labels)
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
        long = read_records(src, progress=progress, on_bad_record=on_bad_record)
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
        column = "in-hospital_death" if task == "mortality" else "length_of_stay"
        raw = out[column].reindex(rid_int)
        value = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64, copy=True)
        has_row = np.isin(rid_int.to_numpy(), out.index.to_numpy())
        if task == "mortality":
            invalid = has_row & ~np.isin(value, (0.0, 1.0))
            lab = np.where(invalid, np.nan, value)
        else:  # Length_of_stay < 0 is the data's own "unknown" (not an error)
            invalid = has_row & ~np.isfinite(value)
            lab = np.where(np.isfinite(value) & (value >= 0), (value > LOS_THRESHOLD_DAYS).astype(np.float64), np.nan)
        _report_invalid_labels(outcomes_path, column, rid_int.to_numpy()[invalid], raw.to_numpy()[invalid],
                               invalid_labels)
        records["label"] = lab
        records["reason"] = [
            "unreadable_record" if f in long.attrs["bad_records"] else ("invalid_label" if bad else None)
            for f, bad in zip(files, invalid, strict=True)
        ]
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
        reasons=[r if isinstance(r, str) else None for r in records["reason"].tolist()],
        meta={
            "grid": f"{length} hourly steps from ICU admission",
            "sets": [f"set-{s}" for s in _set_names(sets)],
            "implausible_values": {c: int(implausible[c]) for c in channels},
            "bad_records": {f: why for _, long in frames for f, why in long.attrs["bad_records"].items()},
        },
    )


def _report_invalid_labels(path: Path, column: str, record_ids: np.ndarray, raw: np.ndarray, mode: str) -> None:
    """Warn about (``mode="drop"``) or refuse (``"error"``) outcome values that are not labels."""
    if len(record_ids) == 0:
        return
    examples = ", ".join(f"RecordID {int(r)} = {'empty' if pd.isna(v) else repr(v)}"
                         for r, v in zip(record_ids[:5], raw[:5], strict=True))
    message = (f"physionet2012: {str(path)!r}: {len(record_ids)} record(s) with an invalid {column!r} "
               f"(not a 0/1 label; e.g. {examples})")
    if mode == "error":
        raise ValueError(message)
    warnings.warn(message + "; their records are dropped (counted as 'invalid_label')", stacklevel=4)


def load_physionet2012(path: str | Path, *, min_site_records: int = 20, **options) -> list[SiteData]:
    """``build_sites`` then drop (and warn about) sites below ``min_site_records``."""
    return drop_small_sites(build_sites(path, **options), min_site_records, source="physionet2012")


def sets_in(folder) -> tuple[str, ...]:
    """Set letters ``x`` with records (``set-x/`` or ``set-x.tar.gz``) and ``Outcomes-x.txt`` in ``folder``."""
    folder = Path(folder)
    found = []
    for p in sorted(folder.iterdir()):
        m = re.fullmatch(r"set-(\w+?)(\.tar\.gz)?", p.name)
        if m and (p.is_dir() or m.group(2)) and (folder / f"Outcomes-{m.group(1)}.txt").is_file():
            found.append(m.group(1))
    if not found:
        raise ValueError(
            f"evaluation.external-path {str(folder)!r} holds no PhysioNet 2012 cohort: expected a set-<x> folder or "
            "set-<x>.tar.gz with its Outcomes-<x>.txt"
        )
    return tuple(dict.fromkeys(found))


def external_options(folder: str | Path, data_config) -> dict:
    """Loader options for an external cohort in ``folder``: every set there, except set-a (the
    training set) when the folder is ``data.path`` itself."""
    sets = sets_in(folder)
    if data_config.path and Path(folder).resolve() == Path(data_config.path).resolve():
        sets = tuple(s for s in sets if s != "a")  # the training cohort is set-a of the same folder
    if not sets:
        raise ValueError(f"evaluation.external-path {str(folder)!r} holds only set-a, the training cohort")
    return {"sets": sets}
