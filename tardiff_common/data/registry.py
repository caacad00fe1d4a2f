"""The one interface to the real ICU sources: ``load_sites(source, path, ...) -> list[SiteData]``.

Sources (``SOURCES``), each turned into one ``SiteData`` per site (see ``contract.py``):

* ``"eicu"`` — full eICU-CRD schema: ``patient``, ``hospital``, ``vitalPeriodic``; x is
  3 channels (heartrate, respiration, sao2) x 288 five-minute bins over the first 24 h; sites
  by ``hospitalid`` (default) or ``region``.
* ``"eicu_yaib"`` — the YAIB hourly extract ``yaib_hourly/<extract>/dyn.parquet`` joined with
  ``patient`` and ``hospital`` (``path`` = the ``eicu_demo`` folder); 7 channels (hr, resp,
  o2sat, sbp, dbp, map, temp) x 24 hourly steps; sites by ``region`` (default) or hospital.
* ``"mimic3"`` — ``CHARTEVENTS`` (all parts), ``ICUSTAYS``, ``ADMISSIONS``; 7 channels (HR, SBP,
  DBP, MBP, RR, Temp, SpO2) x 24 hourly steps from ICU ``intime``; sites by ``first_careunit``.
* ``"physionet2012"`` — ``set-a.tar.gz`` (or a ``set-a/`` folder) and ``Outcomes-a.txt``;
  6 channels (HR, NISysABP, NIDiasABP, NIMAP, Temp, RespRate) x 48 hourly steps; sites by
  ``ICUType``.

Shapes (contract.py): ``x`` float32 [N, C, L], ``y`` int64 [N], ``mask`` bool [N, C, L].

Tasks: ``"mortality"`` (in-hospital death) and ``"los"`` (stay longer than 3 days); the exact
definition per source is in each loader module's docstring.

Every source goes through the same steps, implemented once here and used by the loader
modules (``eicu.py``, ``mimic3.py``, ``physionet2012.py``):

1. ``find_table`` / ``read_csv_table`` — locate a table (upper/lower case, ``.csv`` or
   ``.csv.gz``) and read only the needed columns; a missing file, a missing column or an
   unreadable/truncated file is a ``ValueError`` naming the file (and the column).
2. ``GridAccumulator`` — average the observations falling into the same (stay, channel, step).
3. ``fill_gaps`` — forward fill, then backward fill for leading gaps (the record's own values
   only). A channel never observed in a stay gets a *provisional* value (the source-wide median,
   ``meta["fill_median"]``) only so that ``x`` stays finite: every run replaces it after the split
   with the median of the owning site's training split (``data/impute.py``, called by
   ``pipeline.phases.prepare_splits``), so no held-out record enters it. ``mask`` is True
   exactly at the bins that held at least one real observation.
4. ``assemble_sites`` — drop stays without any observation (counted as ``"no_vitals"``), group
   the rest into sites, record the drop counts in ``meta["dropped"]`` (this site) and
   ``meta["dropped_total"]`` (whole source), and validate each site.
5. ``drop_small_sites`` — sites with fewer than ``min_site_records`` records are dropped,
   reported through ``warnings.warn`` and recorded in each kept site's ``meta["dropped_sites"]``.

``load_sites`` adds a cache of the prepared arrays (``cache.py``) between steps 4 and 5, so
changing ``min_site_records`` never re-reads the raw files.

Example::

    sites = load_sites("eicu_yaib", "../shared/data/eicu_demo", task="mortality")
    print(summarize_sites(sites))
"""

from __future__ import annotations

import gzip
import importlib
import inspect
import re
import sys
import tarfile
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from tardiff_common.data import cache as _cache
from tardiff_common.data.contract import SiteData, validate_site

__all__ = [
    "SOURCES",
    "TASKS",
    "DEFAULT_CACHE_DIR",
    "load_sites",
    "summarize_sites",
    "find_table",
    "read_csv_table",
    "GridAccumulator",
    "fill_gaps",
    "assemble_sites",
    "drop_small_sites",
    "filter_ranges",
]

SOURCES: tuple[str, ...] = ("eicu", "eicu_yaib", "mimic3", "physionet2012")
TASKS: tuple[str, ...] = ("mortality", "los")

# source -> (module, function listing the input files, function building all sites)
_LOADERS: dict[str, tuple[str, str, str]] = {
    "eicu": ("tardiff_common.data.eicu", "input_files", "build_sites"),
    "eicu_yaib": ("tardiff_common.data.eicu", "yaib_input_files", "build_yaib_sites"),
    "mimic3": ("tardiff_common.data.mimic3", "input_files", "build_sites"),
    "physionet2012": ("tardiff_common.data.physionet2012", "input_files", "build_sites"),
}


class _DefaultCacheDir:
    """Sentinel: use ``$TARDIFF_CACHE_DIR`` or ``~/.cache/tardiff``."""

    def __repr__(self) -> str:
        return "DEFAULT_CACHE_DIR"


DEFAULT_CACHE_DIR = _DefaultCacheDir()

# Errors raised by gzip / zlib / tar / CSV readers on unreadable or truncated input.
READ_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    tarfile.TarError,
    UnicodeDecodeError,
    pd.errors.ParserError,
    pd.errors.EmptyDataError,
)


def log(progress: bool, message: str) -> None:
    """Print a progress line to stderr when ``progress`` is on."""
    if progress:
        print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# 1. Tables: find and read
# ---------------------------------------------------------------------------------------------


def find_table(folder: str | Path, name: str, *, parts: bool = False) -> list[Path]:
    """Files of table ``name`` in ``folder``: ``name.csv`` or ``name.csv.gz``, any letter case.

    With ``parts=True`` also split tables ``name_1.csv.gz``, ``name_2.csv.gz``, … (all parts,
    sorted). Raises ``ValueError`` naming the expected file when nothing matches.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"data folder {str(folder)!r} does not exist (looking for {name}.csv[.gz])")
    stem = re.escape(name.lower())
    suffix = r"(?:_?\d+)?" if parts else ""
    pattern = re.compile(rf"^{stem}{suffix}\.csv(?:\.gz)?$")
    found = sorted(
        (p for p in folder.iterdir() if p.is_file() and pattern.match(p.name.lower())),
        key=lambda p: _natural_key(p.name.lower()),
    )
    if not found:
        extra = f" (or split parts {name}_1.csv.gz, ...)" if parts else ""
        raise ValueError(f"missing table: expected {name}.csv or {name}.csv.gz in {str(folder)!r}{extra}")
    # Prefer one file per part: if both x.csv and x.csv.gz exist, keep the first listed.
    seen: dict[str, Path] = {}
    for p in found:
        key = p.name.lower().removesuffix(".gz")
        seen.setdefault(key, p)
    return list(seen.values())


def csv_columns(path: Path) -> dict[str, str]:
    """Map lower-case column name -> column name as written in the header of ``path``."""
    try:
        header = pd.read_csv(path, nrows=0)
    except READ_ERRORS as err:
        raise ValueError(f"cannot read {str(path)!r}: {type(err).__name__}: {err}") from err
    return {str(c).strip().lower(): c for c in header.columns}


def read_csv_table(
    path: Path,
    required: Sequence[str],
    *,
    optional: Sequence[str] = (),
    dtype: dict | None = None,
    chunksize: int | None = None,
) -> pd.DataFrame | Iterator[pd.DataFrame]:
    """Read columns ``required`` (+ ``optional`` when present) of a CSV[.gz], names lower-cased.

    Column names are matched case-insensitively. With ``chunksize``, returns an iterator of
    DataFrames (errors while iterating are also re-raised as ``ValueError`` naming the file).
    """
    columns = csv_columns(path)
    missing = [c for c in required if c.lower() not in columns]
    if missing:
        raise ValueError(f"{str(path)!r} lacks column(s) {missing}; found {sorted(columns)[:30]}")
    wanted = [c.lower() for c in required] + [c.lower() for c in optional if c.lower() in columns]
    usecols = [columns[c] for c in wanted]
    rename = {columns[c]: c for c in wanted}
    dtype = {columns[k.lower()]: v for k, v in (dtype or {}).items() if k.lower() in columns}

    def _read(**kw):
        try:
            return pd.read_csv(path, usecols=usecols, dtype=dtype or None, **kw)
        except READ_ERRORS as err:
            raise ValueError(f"cannot read {str(path)!r}: {type(err).__name__}: {err}") from err
        except ValueError as err:  # e.g. a value that does not fit the requested dtype
            raise ValueError(f"cannot read {str(path)!r}: {err}") from err

    if chunksize is None:
        return _read().rename(columns=rename)

    def _chunks() -> Iterator[pd.DataFrame]:
        reader = _read(chunksize=chunksize)
        try:
            for chunk in reader:
                yield chunk.rename(columns=rename)
        except READ_ERRORS as err:
            raise ValueError(f"cannot read {str(path)!r}: {type(err).__name__}: {err}") from err
        except ValueError as err:
            raise ValueError(f"cannot read {str(path)!r}: {err}") from err
        finally:
            reader.close()

    return _chunks()


def filter_ranges(values: pd.Series | np.ndarray, low: float, high: float) -> tuple[np.ndarray, int]:
    """Boolean "keep" array for finite values within [low, high], and the number rejected."""
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    keep = finite & (v >= low) & (v <= high)
    return keep, int((finite & ~keep).sum())


# ---------------------------------------------------------------------------------------------
# 2. Grid: mean of the observations in each (stay, channel, step)
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# 3. Gap filling
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# 4. Sites
# ---------------------------------------------------------------------------------------------


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


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
    for name in sorted(set(kept_sites.tolist()), key=_natural_key):
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


# ---------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------


def _loader(source: str):
    if source not in _LOADERS:
        raise ValueError(f"unknown source {source!r}; choose one of {list(SOURCES)}")
    module_name, inputs_name, build_name = _LOADERS[source]
    module = importlib.import_module(module_name)
    return getattr(module, inputs_name), getattr(module, build_name)


def load_sites(
    source: str,
    path: str | Path,
    *,
    task: str = "mortality",
    site_by: str = "default",
    min_site_records: int = 20,
    channels: tuple[str, ...] | None = None,
    length: int | None = None,
    cache_dir: str | Path | None | object = DEFAULT_CACHE_DIR,
    progress: bool = False,
    **options,
) -> list[SiteData]:
    """Load ``source`` from folder ``path`` as one validated ``SiteData`` per site.

    ``task``: ``"mortality"`` or ``"los"`` (> 3 days). ``site_by``: ``"default"`` or a
    source-specific choice (``eicu``/``eicu_yaib``: ``"hospital"``, ``"region"``; ``mimic3``:
    ``"careunit"``; ``physionet2012``: ``"icutype"``; every source: ``"all"`` = one site).
    ``channels`` / ``length``: override the source's default channels and number of time
    steps. ``options`` go to the loader (``eicu_yaib``: ``extract``, ``unknown_status``;
    ``eicu``: ``unknown_status``; ``physionet2012``: ``sets``). ``cache_dir``: folder of the
    prepared-array cache (default ``$TARDIFF_CACHE_DIR`` or ``~/.cache/tardiff``; ``None``
    disables it). Sites below ``min_site_records`` are dropped with a warning; single-class
    sites are kept and warned about (``summarize_sites`` flags them).
    """
    inputs_fn, build_fn = _loader(source)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    accepted = set(inspect.signature(build_fn).parameters) - {"path", "progress"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {unknown}; accepted: {sorted(accepted)}")
    opts = {
        "task": task,
        "site_by": site_by,
        "channels": None if channels is None else tuple(channels),
        "length": None if length is None else int(length),
        **options,
    }
    inputs = inputs_fn(path, **opts)  # raises ValueError naming a missing file up front

    if cache_dir is DEFAULT_CACHE_DIR:
        cache_dir = _cache.default_cache_dir()
    sites = None
    key = None
    if cache_dir is not None:
        key = _cache.cache_key(source, opts, inputs)
        sites = _cache.load_cached(cache_dir, source, key)
        if sites is not None:
            log(progress, f"{source}: loaded {len(sites)} site(s) from cache {cache_dir}")
    if sites is None:
        start = time.perf_counter()
        sites = build_fn(path, progress=progress, **opts)
        log(progress, f"{source}: built {len(sites)} site(s) in {time.perf_counter() - start:.1f} s")
        if cache_dir is not None:
            try:
                _cache.save_cached(cache_dir, source, key, sites, options=opts, inputs=inputs)
            except Exception as err:  # caching is an optimization: never lose the data for it
                warnings.warn(
                    f"{source}: could not write the cache in {str(cache_dir)!r} "
                    f"({type(err).__name__}: {err}); continuing without it",
                    stacklevel=2,
                )
    sites = [validate_site(s, require_both_classes=False) for s in sites]
    sites = drop_small_sites(sites, int(min_site_records), source=source)
    single = single_class_sites(sites)
    if single:
        warnings.warn(
            f"{source}: site(s) with a single class (kept; the caller decides): "
            + ", ".join(f"{k} (only {v})" for k, v in single.items()),
            stacklevel=2,
        )
    return sites


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
