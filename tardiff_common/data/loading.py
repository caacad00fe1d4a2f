"""Sites for a ``DataConfig``: whichever source it names, through the registry (``registry.py``).

``data.length`` and ``data.channels`` reach every loader: a loader honours them or refuses
them with a ``ValueError`` naming the key (never silently ignores them). ``length = 0`` and
``channels = ""`` mean the source's own defaults.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .contract import SiteData
from .registry import load_sites, source
from .sites import summarize_sites

__all__ = ["held_out", "load_sites_for", "load_external_for", "load_folder_source", "parse_channels", "summarize_sites"]


def parse_channels(text: str) -> tuple[str, ...] | None:
    """``"HR, GCS"`` -> ``("HR", "GCS")``; ``""`` -> ``None`` (the source's default set).
    Raises ``ValueError`` naming ``data.channels`` on an empty or repeated name."""
    if not str(text).strip():
        return None
    names = tuple(c.strip() for c in str(text).split(","))
    if any(not c for c in names):
        raise ValueError(f"data.channels has an empty name: {text!r}")
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise ValueError(f"data.channels names {repeated} more than once: {text!r}")
    return names


def held_out(data_config) -> tuple[str, ...]:
    """The site names of ``data.hold-out`` (comma-separated; ``()`` when empty)."""
    text = str(getattr(data_config, "hold_out", "") or "")
    return tuple(n.strip() for n in text.split(",") if n.strip())


def load_sites_for(data_config) -> list[SiteData]:
    """``data_config`` is a ``pipeline.config.DataConfig``; its source's registered load reads
    (or generates) the sites, less the ones ``data.hold-out`` names (held out for external
    validation: ``evaluation.external-path`` = ``data.path`` then scores exactly them). An unknown
    name is a ``ValueError`` listing the source's sites."""
    sites = source(data_config.source).sites_for(data_config)
    held = held_out(data_config)
    if not held:
        return sites
    names = [s.name for s in sites]
    unknown = [h for h in held if h not in names]
    if unknown:
        raise ValueError(f"data.hold-out names {unknown}, not sites of {data_config.source!r} with data.site-by = "
                         f"{data_config.site_by!r}; its sites: {names}")
    kept = [s for s in sites if s.name not in held]
    if not kept:
        raise ValueError(f"data.hold-out = {data_config.hold_out!r} holds out every site; nothing is left to train on")
    return kept


def load_folder_source(data_config) -> list[SiteData]:
    """The registered load of every folder source: ``load_sites`` on ``data.path``."""
    if not data_config.path:
        raise ValueError(f"data source {data_config.source!r} needs data.path (the folder with its files)")
    pool = getattr(data_config, "small_sites", "drop") == "pool"
    sites = load_sites(
        data_config.source,
        data_config.path,
        task=data_config.task,
        site_by=data_config.site_by,
        min_site_records=1 if pool else data_config.min_site_records,
        channels=parse_channels(getattr(data_config, "channels", "")),
        length=int(data_config.length) or None,
    )
    if pool:  # data.small-sites = "pool": the sites below the minimum become one site "other"
        from .small_sites import pool_small_sites

        sites = pool_small_sites(sites, data_config.min_site_records, source=data_config.source)
    return sites


def load_external_for(data_config, path: str, *, key: str = "evaluation.external-path") -> list[SiteData]:
    """The sites of an external cohort at ``path`` (``evaluation.external-path``): the same source,
    task, channels and length as ``data_config``, read by the same loader, no size filter.

    A source module may pick the cohorts in the folder (``external_options``; for
    ``physionet2012``: every ``set-<x>`` folder or ``set-<x>.tar.gz`` with its ``Outcomes-<x>.txt``,
    except set-a, the training set, when the folder is ``data.path`` itself). Raises
    ``ValueError`` naming ``evaluation.external-path`` (or ``key``: a site's node-config entry) when the path is missing or holds no such
    cohort, or the source has no cohorts in folders (the synthetic one). With ``data.hold-out`` and
    ``path`` = ``data.path``, the cohort is the held-out sites of the training data's own load.
    """
    entry = source(data_config.source)
    if not entry.external:
        raise ValueError(f"{key} needs a data.source read from folders; {entry.name!r} has no cohorts")
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{key} {path!r} is not a folder")
    held = held_out(data_config)
    same = bool(data_config.path) and folder.resolve() == Path(data_config.path).resolve()
    if held and same:  # the sites data.hold-out left out of training, read by the training load
        return [s for s in source(data_config.source).sites_for(data_config) if s.name in held]
    module = importlib.import_module(entry.module)
    try:
        options = module.external_options(path, data_config) if hasattr(module, "external_options") else {}
    except ValueError as err:  # the source's own message names the centralized key
        raise ValueError(str(err).replace("evaluation.external-path", key)) from err
    try:
        return load_sites(
            data_config.source,
            folder,
            task=data_config.task,
            site_by=data_config.site_by,
            min_site_records=1,
            channels=parse_channels(getattr(data_config, "channels", "")),
            length=int(data_config.length) or None,
            **options,
        )
    except ValueError as err:
        raise ValueError(f"{key} {path!r}: {err}") from err
