"""Sites for a ``DataConfig``: the embedded generator or one of the real-data loaders."""

from __future__ import annotations

from .contract import SiteData
from .registry import summarize_sites
from .synthetic import SyntheticICUConfig, generate_hospitals

__all__ = ["load_sites_for", "summarize_sites"]


def load_sites_for(data_config) -> list[SiteData]:
    """``data_config`` is a ``pipeline.config.DataConfig``; "synthetic" needs no files."""
    if data_config.source == "synthetic":
        return generate_hospitals(
            SyntheticICUConfig(
                num_hospitals=data_config.num_hospitals,
                length=data_config.length,
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
    )
