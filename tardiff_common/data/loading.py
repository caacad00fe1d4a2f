"""Sites for a ``DataConfig``: the embedded generator or one of the real-data loaders.

``data.length`` and ``data.channels`` reach every loader: a loader honours them or refuses
them with a ``ValueError`` naming the key (never silently ignores them). ``length = 0`` and
``channels = ""`` mean the source's own defaults.
"""

from __future__ import annotations

import re
from pathlib import Path

from .contract import SiteData
from .registry import summarize_sites
from .synthetic import CHANNELS as SYNTHETIC_CHANNELS
from .synthetic import SyntheticICUConfig, generate_hospitals

__all__ = ["load_sites_for", "load_external_for", "parse_channels", "summarize_sites"]

SYNTHETIC_LENGTH = 48


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


def load_sites_for(data_config) -> list[SiteData]:
    """``data_config`` is a ``pipeline.config.DataConfig``; "synthetic" needs no files."""
    channels = parse_channels(getattr(data_config, "channels", ""))
    length = int(data_config.length) or None
    if data_config.source == "synthetic":
        if channels is not None and channels != SYNTHETIC_CHANNELS:
            raise ValueError(
                f"data.channels={','.join(channels)!r} cannot be honoured by the synthetic source: it generates "
                f"exactly {','.join(SYNTHETIC_CHANNELS)!r} (leave data.channels empty)"
            )
        return generate_hospitals(
            SyntheticICUConfig(
                num_hospitals=data_config.num_hospitals,
                length=length or SYNTHETIC_LENGTH,
                seed=data_config.data_seed,
                size_scale=data_config.size_scale,
            )
        )
    from .registry import load_sites

    if not data_config.path:
        raise ValueError(f"data source {data_config.source!r} needs data.path (the folder with its files)")
    return load_sites(
        data_config.source,
        data_config.path,
        task=data_config.task,
        site_by=data_config.site_by,
        min_site_records=data_config.min_site_records,
        channels=channels,
        length=length,
    )


def load_external_for(data_config, path: str) -> list[SiteData]:
    """The sites of an external cohort at ``path`` (``evaluation.external-path``): the same source,
    task, channels and length as ``data_config``, read by the same loader, no size filter.

    For ``physionet2012`` the folder holds one or more ``set-<x>`` folders or ``set-<x>.tar.gz``
    with their ``Outcomes-<x>.txt``: all are read, except set-a (the training set) when the folder
    is ``data.path`` itself. Raises ``ValueError`` naming
    ``evaluation.external-path`` when the path is missing or holds no such cohort.
    """
    from .registry import load_sites

    if data_config.source == "synthetic":
        raise ValueError("evaluation.external-path needs a real data.source; the synthetic source has no cohorts")
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"evaluation.external-path {path!r} is not a folder")
    options = {}
    if data_config.source == "physionet2012":
        sets = physionet_sets_in(folder)
        if data_config.path and folder.resolve() == Path(data_config.path).resolve():
            sets = tuple(s for s in sets if s != "a")  # the training cohort is set-a of the same folder
        if not sets:
            raise ValueError(f"evaluation.external-path {path!r} holds only set-a, the training cohort")
        options["sets"] = sets
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
        raise ValueError(f"evaluation.external-path {path!r}: {err}") from err


def physionet_sets_in(folder) -> tuple[str, ...]:
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

