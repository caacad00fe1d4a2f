"""The classifier benchmark beside every real-only row (issue 13): gradient boosting on summary
statistics (``metrics.gbm_baseline``) of the same records and splits as the evaluation classifier.

Trained on the (pooled) training split in original units with its observed mask, F1 threshold on
the tuning split, scored on every test split the real-only row is scored on (pooled, each site's,
the external cohort), one fit per evaluation seed. ``metrics["baselines"]["gbm"]`` =
{test name: summary}, the schema of ``metrics["tstr"]["real"]``.
"""

from __future__ import annotations

from ..data.contract import SiteData, SiteSplits
from ..metrics.gbm_baseline import score_gbm

__all__ = ["gbm_benchmark", "BENCHMARK_NOTE"]

BENCHMARK_NOTE = ("scikit-learn HistGradientBoostingClassifier on mean / min / max / last of each channel over "
                  "its observed steps (NaN when never observed), same training / tuning / test records")


def _arrays(site: SiteData):
    return site.x, site.mask, site.y


def gbm_benchmark(splits: SiteSplits, tests: dict[str, SiteData], seeds: tuple[int, ...]) -> dict[str, dict]:
    """{test name: summary} of the gradient-boosting benchmark trained on ``splits.train``."""
    return score_gbm(_arrays(splits.train), _arrays(splits.tuning), {k: _arrays(v) for k, v in tests.items()},
                     tuple(seeds))
