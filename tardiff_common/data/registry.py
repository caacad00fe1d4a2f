"""The registry of data sources and the one folder interface, ``load_sites(source, path, ...)``.

Every source registers here as a ``Source``: its name and ``load(data_config) -> list[SiteData]``
(the sites a ``pipeline.config.DataConfig`` asks for), plus, for the sources read from a folder,
the loader module behind ``load_sites`` and whether it holds external cohorts. The
``data.loading`` functions dispatch through this table only; no caller names a source.

* ``"synthetic"`` — the embedded seeded generator (``synthetic.py``); needs no files.
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

A folder source goes through the same steps, each implemented once and used by the loader
modules (``eicu.py``, ``mimic3.py``, ``physionet2012.py``):

1. ``tables.find_table`` / ``tables.read_csv_table`` — locate a table (upper/lower case,
   ``.csv`` or ``.csv.gz``) and read only the needed columns; a missing file, a missing column
   or an unreadable/truncated file is a ``ValueError`` naming the file (and the column).
2. ``grid.GridAccumulator`` — average the observations falling into the same (stay, channel,
   step).
3. ``grid.fill_gaps`` — forward fill, then backward fill for leading gaps (the record's own
   values only). A channel never observed in a stay gets a *provisional* value (the
   source-wide median, ``meta["fill_median"]``) only so that ``x`` stays finite: every run
   replaces it after the split with the median of the owning site's training split
   (``data/impute.py``, called by ``pipeline.phases.prepare_splits``), so no held-out record
   enters it. ``mask`` is True exactly at the bins that held at least one real observation.
4. ``sites.assemble_sites`` — drop stays without any observation (counted as ``"no_vitals"``),
   group the rest into sites, record the drop counts in ``meta["dropped"]`` (this site) and
   ``meta["dropped_total"]`` (whole source), and validate each site.
5. ``sites.drop_small_sites`` — sites with fewer than ``min_site_records`` records are
   dropped, reported through ``warnings.warn`` and recorded in each kept site's
   ``meta["dropped_sites"]``.

``load_sites`` adds a cache of the prepared arrays (``cache.py``) between steps 4 and 5, so
changing ``min_site_records`` never re-reads the raw files.

Example::

    sites = load_sites("eicu_yaib", "../shared/data/eicu_demo", task="mortality")
    print(summarize_sites(sites))
"""

from __future__ import annotations

import importlib
import inspect
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from tardiff_common.data import cache as _cache
from tardiff_common.data.contract import SiteData, validate_site

# The steps, re-exported: the one interface of the loaders stays importable from here.
from tardiff_common.data.grid import GridAccumulator, fill_gaps
from tardiff_common.data.sites import assemble_sites, drop_small_sites, single_class_sites, summarize_sites
from tardiff_common.data.tables import READ_ERRORS, filter_ranges, find_table, log, read_csv_table

__all__ = [
    "Source",
    "SOURCES",
    "TASKS",
    "DEFAULT_CACHE_DIR",
    "register",
    "source",
    "load_sites",
    "summarize_sites",
    "find_table",
    "read_csv_table",
    "READ_ERRORS",
    "GridAccumulator",
    "fill_gaps",
    "assemble_sites",
    "drop_small_sites",
    "filter_ranges",
    "log",
]

TASKS: tuple[str, ...] = ("mortality", "los")
_FOLDER_LOAD = "tardiff_common.data.loading:load_folder_source"


@dataclass(frozen=True)
class Source:
    """One registered data source.

    ``load``: ``"module:function"``, imported on first use, of ``(data_config) -> list[SiteData]``:
    the sites a ``DataConfig`` asks for (honouring or refusing ``data.channels`` /
    ``data.length`` by name). Folder sources also name their loader
    module and its two functions behind ``load_sites``: ``input_files(path, **options) ->
    list[Path]`` (the files read; they key the cache) and ``build_sites(path, *, progress,
    **options) -> list[SiteData]`` (all sites, no size filter). ``external``: the folder can
    hold further cohorts of the same schema (``evaluation.external-path``); a module function
    ``external_options(folder, data_config) -> dict`` picks them when the module has one.
    """

    name: str
    load: str
    module: str = ""
    input_files: str = "input_files"
    build_sites: str = "build_sites"
    external: bool = False


    def sites_for(self, data_config) -> list[SiteData]:
        """The sites of ``data_config`` (a ``pipeline.config.DataConfig`` naming this source)."""
        module, function = self.load.split(":")
        return getattr(importlib.import_module(module), function)(data_config)


_REGISTRY: dict[str, Source] = {}


def register(entry: Source) -> Source:
    """Add ``entry`` to the registry (a name registers once); returns it."""
    if entry.name in _REGISTRY:
        raise ValueError(f"data source {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def source(name: str) -> Source:
    """The registered source ``name``; ``ValueError`` listing the choices otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown source {name!r}; choose one of {list(_REGISTRY)}")
    return _REGISTRY[name]


class _DefaultCacheDir:
    """Sentinel: use ``$TARDIFF_CACHE_DIR`` or ``~/.cache/tardiff``."""

    def __repr__(self) -> str:
        return "DEFAULT_CACHE_DIR"


DEFAULT_CACHE_DIR = _DefaultCacheDir()


def _reader(name: str):
    entry = source(name)
    if not entry.module:
        raise ValueError(f"data source {name!r} is not read from a folder (load it with data.loading.load_sites_for)")
    module = importlib.import_module(entry.module)
    return getattr(module, entry.input_files), getattr(module, entry.build_sites)


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
    inputs_fn, build_fn = _reader(source)
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


# ---------------------------------------------------------------------------------------------
# The sources
# ---------------------------------------------------------------------------------------------

register(Source("eicu", load=_FOLDER_LOAD, module="tardiff_common.data.eicu", external=True))
register(Source("eicu_yaib", load=_FOLDER_LOAD, module="tardiff_common.data.eicu", input_files="yaib_input_files",
                build_sites="build_yaib_sites", external=True))
register(Source("mimic3", load=_FOLDER_LOAD, module="tardiff_common.data.mimic3", external=True))
register(Source("physionet2012", load=_FOLDER_LOAD, module="tardiff_common.data.physionet2012", external=True))
register(Source("synthetic", load="tardiff_common.data.synthetic:sites_for"))

SOURCES: tuple[str, ...] = tuple(_REGISTRY)
