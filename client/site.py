"""A hospital's view of a run: its configuration, its records and its disk.

Everything is rebuilt from the message's ``Context`` on each call, so a handler works the
same in a long-lived simulation worker and in a fresh ClientApp process per message
(deployment). Nothing is kept in module globals.

Which records a site holds (node config first, then run config):

* deployment: ``dataset`` (a source name: eicu, eicu_yaib, mimic3, physionet2012, synthetic),
  ``data-path`` (the folder with the hospital's files) and ``site`` (which site of that source
  this node is; optional when the source yields one site);
* simulation: ``partition-id`` / ``num-partitions`` pick one site of ``data.source`` (the
  embedded generator by default) in a fixed order.

``device`` in the node config (auto | cpu | cuda) overrides the run config's, ``threads``
(torch CPU threads of the site's ClientApp; 0 = torch's default, all cores) overrides the run
config's ``threads`` (which the coordinator sets for everyone), and ``output-dir`` says where
the site keeps its synthetic data (default: ``<output.dir>/<run name>/sites/<site>`` on the
node's file system). ``external-path`` names the site's own external cohort (a folder of its
data source's schema, e.g. a PhysioNet ``set-b``): loaded and checked when the site answers phase
0, scored in phase 4 (``tardiff_common.pipeline.external``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from flwr.app import Context

from tardiff_common.data.contract import SiteData, SiteSplits
from tardiff_common.data.loading import load_sites_for
from tardiff_common.pipeline.config import RunConfig
from tardiff_common.pipeline.external import load_external_cohort
from tardiff_common.pipeline.phases import prepare_splits, resolve_device

__all__ = ["Site", "load_site", "load_site_external"]

_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice at import (before any override)


@dataclass(frozen=True)
class Site:
    """One hospital: its index among the federation's sites, its splits (original units)."""

    index: int
    name: str
    config: RunConfig
    splits: SiteSplits
    device: torch.device
    node_config: dict

    def output_dir(self, run_name: str) -> Path:
        explicit = self.node_config.get("output-dir")
        base = Path(str(explicit)) if explicit else Path(self.config.output.dir) / run_name / "sites"
        return base / self.name


def run_config_of(context: Context) -> RunConfig:
    """The typed run config: pyproject defaults + overrides, as Flower passes them."""
    return RunConfig().with_overrides(dict(context.run_config))


def _pick(sites: list[SiteData], node_config: dict, source: str) -> tuple[int, SiteData]:
    names = [s.name for s in sites]
    if "site" in node_config and str(node_config["site"]):
        wanted = str(node_config["site"])
        if wanted not in names:
            raise ValueError(f"node config site={wanted!r} is not in data source {source!r}; sites: {names}")
        return names.index(wanted), sites[names.index(wanted)]
    if "partition-id" in node_config:
        pid = int(node_config["partition-id"])
        num = int(node_config.get("num-partitions", len(sites)))
        if num != len(sites):
            raise ValueError(
                f"the simulation has {num} partitions but data source {source!r} yields {len(sites)} sites "
                f"({names}); set num-supernodes to {len(sites)}"
            )
        return pid, sites[pid]
    if len(sites) == 1:
        return 0, sites[0]
    raise ValueError(f"node config names no site and source {source!r} has several: {names}; set site=<name>")


def load_site(context: Context) -> Site:
    """Load this node's site (validated and split) from its node config and the run config."""
    config = run_config_of(context)
    node = dict(context.node_config)
    data_overrides = {}
    if node.get("dataset"):
        data_overrides["source"] = str(node["dataset"])
    if node.get("data-path"):
        data_overrides["path"] = str(node["data-path"])
    if data_overrides:
        config = replace(config, data=replace(config.data, **data_overrides))
    if node.get("device"):
        config = replace(config, device=str(node["device"]))
    if "threads" in node and str(node["threads"]).strip() != "":
        threads = int(node["threads"])
        if threads < 0:
            raise ValueError(f"node config threads={threads}: must be >= 0 (0 = torch's default)")
        config = replace(config, threads=threads)
    if config.threads:
        torch.set_num_threads(config.threads)
    elif "threads" in node:  # threads=0 in the node config: torch's default (all cores), not the run's
        torch.set_num_threads(_DEFAULT_THREADS)
    index, site = _pick(load_sites_for(config.data), node, config.data.source)
    return Site(index=index, name=site.name, config=config, splits=prepare_splits(site, config),
                device=resolve_device(config.device), node_config=node)


def load_site_external(site: Site) -> SiteData | None:
    """The site's external cohort (node config ``external-path``) in raw units, or ``None`` when it
    names none. A missing or malformed path, another channel / length layout or a stay id shared
    with the site's own records is a ``ValueError`` naming the site and the node-config entry."""
    path = str(site.node_config.get("external-path", "") or "").strip()
    if not path:
        return None
    own = list(site.splits.parts().values())
    return load_external_cohort(site.config.data, path, own, key=f"site {site.name!r}: node config external-path")
