"""External validation: a second cohort of the same source, scored like the internal test split.

``evaluation.external-path`` names a folder of ``data.source``'s schema (PhysioNet 2012: a
``set-<x>`` folder or tar.gz with its ``Outcomes-<x>.txt``; eICU: the tables of other
hospitals). The cohort is

1. loaded before any training by the same loader, with the run's task, channels and length
   (``data.loading.load_external_for``); a missing or malformed path is a ``ValueError`` naming
   ``evaluation.external-path``, and so is a cohort sharing a stay id with the training data
   or a different channel / length layout;
2. imputed and normalized with *training* statistics only: channels never observed in a record
   take the training split's medians (``data.impute``), values go through the normalizer fitted
   on the training splits (``transform`` only, nothing is refitted);
3. scored with the same evaluation as the internal test split (TSTR, TSRTR, paired
   differences, the gradient-boosting benchmark), into ``metrics["external"]``.

In the federated run a site names its own cohort in its node config (``external-path``): it is
loaded with the same loader (``load_external_cohort``) when the site answers phase 0 (a bad path
is an error naming the site before any training), imputed with the site's own training-split
medians and normalized with the global normalizer of phase 0, scored in phase 4 and reported as
aggregates only (``site_external_result``); the server pools the sites' results with
``pool_external``, the function the centralized section goes through too.

Section schema (the same in centralized and federated runs)::

    {"cohort": {"path", "records", "positives", "prevalence", "sites": [...]},
     "tstr": {set: summary}, "tsrtr": {set: {ratio: summary}}, "paired": {...},
     "baselines": {"gbm": summary}}
"""

from __future__ import annotations

import numpy as np

from ..data.contract import SiteData, concat_sites
from ..data.impute import apply_fill_values, fit_fill_values, normalizer_fill_values
from ..data.loading import load_external_for
from ..data.normalize import Normalizer
from ..metrics.paired import paired_tables
from ..metrics.summary import weighted_summary

__all__ = ["EXTERNAL", "load_external", "load_external_cohort", "transform_external", "site_external_result",
           "pool_external", "external_section"]

EXTERNAL = "external"  # the name of the external cohort among the test splits


def load_external(config, train_sites: list[SiteData]) -> SiteData | None:
    """The external cohort of ``config.evaluation.external_path`` as one pooled ``SiteData`` (raw
    units, provisional fills), or ``None`` when no path is set. Raises ``ValueError`` naming
    ``evaluation.external-path`` for a bad path, a different layout or shared stay ids."""
    path = config.evaluation.external_path
    if not path:
        return None
    return load_external_cohort(config.data, path, train_sites, key="evaluation.external-path")


def load_external_cohort(data_config, path: str, train_sites: list[SiteData], *, key: str) -> SiteData:
    """The cohort at ``path`` (``data_config``'s source, task, channels, length) as one ``SiteData``;
    ``ValueError`` naming ``key`` (the config key or a site's node-config entry) for a missing or
    malformed path, a different channel / length layout than ``train_sites`` or a stay id they share."""
    sites = load_external_for(data_config, path, key=key)
    cohort = concat_sites(sites, EXTERNAL)
    cohort = SiteData(EXTERNAL, cohort.x, cohort.y, cohort.channels, cohort.mask,
                      meta={"path": str(path), "sites": [s.summary() for s in sites],
                            "stay_ids": np.concatenate([np.asarray(s.meta.get("stay_ids", [])) for s in sites])})
    reference = train_sites[0]
    if (cohort.channels, cohort.length) != (reference.channels, reference.length):
        raise ValueError(f"{key} {path!r}: channels {cohort.channels} x {cohort.length} steps differ from the "
                         f"training data's {reference.channels} x {reference.length}")
    train_ids = np.concatenate([np.asarray(s.meta.get("stay_ids", [])) for s in train_sites])
    shared = np.intersect1d(train_ids, cohort.meta["stay_ids"])
    if shared.size:
        raise ValueError(f"{key} {path!r}: {shared.size} stay id(s) also in the training data (e.g. "
                         f"{shared[:5].tolist()}); an external cohort must be disjoint from it")
    return cohort


def transform_external(cohort: SiteData, train: SiteData, normalizer: Normalizer, *,
                       dp: bool = False) -> tuple[SiteData, np.ndarray]:
    """(cohort imputed with ``train``'s medians, its values on the model scale [N, C, L]): training
    statistics only, none of the cohort's own. With ``dp`` (any DP mechanism on) the fill values
    are the normalizer's (``data.impute.normalizer_fill_values``), a post-processing of the
    phase-0 DP release, not the training records' medians."""
    values = normalizer_fill_values(normalizer, cohort.num_channels) if dp else fit_fill_values(train)
    imputed = apply_fill_values(cohort, values)
    return imputed, normalizer.transform(imputed.x)


def site_external_result(cohort: SiteData, by_test: dict, gbm: dict | None) -> dict:
    """What one data holder reports about its external cohort (aggregates only): {"cohort":
    {"records", "positives"}, "tstr", "tsrtr", "gbm"}; ``by_test`` = ``evaluate_site``'s
    ``other_tests[EXTERNAL]``, ``gbm`` its gradient-boosting summary (or None)."""
    return {"cohort": {"records": int(cohort.num_records), "positives": int(cohort.y.sum())},
            "tstr": by_test["tstr"], "tsrtr": by_test["tsrtr"], **({"gbm": gbm} if gbm is not None else {})}


def pool_external(results: dict[str, dict], *, path: str, sites: list | None = None) -> dict:
    """The ``metrics["external"]`` section (module docstring) from the data holders' external
    results ({holder: ``site_external_result``}; the centralized run is one holder): summaries
    weighted by each holder's external cohort size, paired differences of the pooled summaries.
    ``sites``: the cohort's site summaries (default: one row per holder with its counts)."""
    names = sorted(results)
    weights = [float(results[n]["cohort"]["records"]) for n in names]
    first = results[names[0]]
    tstr = {m: weighted_summary([results[n]["tstr"][m] for n in names], weights) for m in first["tstr"]}
    tsrtr = {m: {r: weighted_summary([results[n]["tsrtr"][m][r] for n in names], weights) for r in ratios}
             for m, ratios in first.get("tsrtr", {}).items()}  # none under DP
    with_gbm = [n for n in names if results[n].get("gbm")]
    gbm = weighted_summary([results[n]["gbm"] for n in with_gbm],
                           [float(results[n]["cohort"]["records"]) for n in with_gbm]) if with_gbm else None
    records = int(sum(results[n]["cohort"]["records"] for n in names))
    positives = int(sum(results[n]["cohort"]["positives"] for n in names))
    if sites is None:
        sites = [{"site": n, "records": int(results[n]["cohort"]["records"]),
                  "positives": int(results[n]["cohort"]["positives"])} for n in names]
    return {
        "cohort": {"path": path, "records": records, "positives": positives,
                   "prevalence": positives / records if records else float("nan"), "sites": sites},
        "tstr": tstr,
        "tsrtr": tsrtr,
        "paired": paired_tables(tstr, tsrtr),
        "baselines": {"gbm": gbm} if gbm is not None else {},
    }


def external_section(cohort: SiteData, tstr: dict, tsrtr: dict, gbm: dict | None) -> dict:
    """The centralized run's ``metrics["external"]`` section: its one cohort through ``pool_external``
    (the pooling the federated run uses), so both runs write one schema."""
    result = site_external_result(cohort, {"tstr": tstr, "tsrtr": tsrtr}, gbm)
    return pool_external({"pooled": result}, path=cohort.meta.get("path", ""), sites=cohort.meta.get("sites", []))
