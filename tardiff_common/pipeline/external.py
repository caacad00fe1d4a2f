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

Section schema (the same in centralized and federated runs)::

    {"cohort": {"path", "records", "positives", "prevalence", "sites": [...]},
     "tstr": {set: summary}, "tsrtr": {set: {ratio: summary}}, "paired": {...},
     "baselines": {"gbm": summary}}
"""

from __future__ import annotations

import numpy as np

from ..data.contract import SiteData, concat_sites
from ..data.impute import apply_fill_values, fit_fill_values
from ..data.loading import load_external_for
from ..data.normalize import Normalizer
from ..metrics.paired import paired_tables

__all__ = ["EXTERNAL", "load_external", "transform_external", "external_section"]

EXTERNAL = "external"  # the name of the external cohort among the test splits


def load_external(config, train_sites: list[SiteData]) -> SiteData | None:
    """The external cohort of ``config.evaluation.external_path`` as one pooled ``SiteData`` (raw
    units, provisional fills), or ``None`` when no path is set. Raises ``ValueError`` naming
    ``evaluation.external-path`` for a bad path, a different layout or shared stay ids."""
    path = config.evaluation.external_path
    if not path:
        return None
    key = "evaluation.external-path"
    sites = load_external_for(config.data, path)
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


def transform_external(cohort: SiteData, train: SiteData, normalizer: Normalizer) -> tuple[SiteData, np.ndarray]:
    """(cohort imputed with ``train``'s medians, its values on the model scale [N, C, L]): training
    statistics only, none of the cohort's own."""
    imputed = apply_fill_values(cohort, fit_fill_values(train))
    return imputed, normalizer.transform(imputed.x)


def external_section(cohort: SiteData, tstr: dict, tsrtr: dict, gbm: dict | None) -> dict:
    """The ``metrics["external"]`` section from the cohort's summaries (see the module docstring)."""
    return {
        "cohort": {"path": cohort.meta.get("path", ""), "records": cohort.num_records,
                   "positives": int(cohort.y.sum()), "prevalence": cohort.prevalence,
                   "sites": cohort.meta.get("sites", [])},
        "tstr": tstr,
        "tsrtr": tsrtr,
        "paired": paired_tables(tstr, tsrtr),
        "baselines": {"gbm": gbm} if gbm is not None else {},
    }
