"""Real-only rows of the clinical evaluation (issue 13): the evaluation classifier vs gradient
boosting on summary statistics, on the internal test split and on an external cohort, for one
channel set per call. No generator is trained: these are the rows every synthetic-data claim is
read against.

    python -m simulations.classifier_benchmark --out runs/bench-p12 --source physionet2012 \\
        --path ../shared/data/physionet2012 --set evaluation.external-path=\\"../shared/data/physionet2012\\" \\
        --set data.channels=\\"HR,NISysABP,NIDiasABP,NIMAP,Temp,RespRate\\"

``--masks`` also trains the evaluation classifier with the missingness masks as extra input
channels (observed = 1, imputed = -1, one per variable; ``with_mask_channels``), on the same
records, splits and seeds: the "classifier+masks" rows. The generator does not model masks, so
this is a real-only measurement (what the masks would buy the classifier), not a pipeline option.

Writes ``<out>/benchmark.json`` ({"config", "internal": {model: summary}, "external": ...}) and
prints a markdown table. Splits, imputation (training medians) and normalization are the run's
(``centralized.pooled_data``, ``pipeline.external``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from simulations.study_cli import add_config_args, config_from_args
from tardiff_common.data.loading import load_sites_for
from tardiff_common.metrics.utility import score_training_set
from tardiff_common.pipeline.benchmark import gbm_benchmark
from tardiff_common.pipeline.centralized import pooled_data
from tardiff_common.pipeline.external import EXTERNAL, load_external, transform_external
from tardiff_common.report.markdown import format_score
from tardiff_common.report.run_folder import to_jsonable


def with_mask_channels(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """[N, C, L] model-scale values + bool observed mask -> [N, 2C, L]: the values, then one channel
    per variable holding +1 where observed and -1 where imputed (all +1 without a mask)."""
    observed = np.ones(x.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if observed.shape != x.shape:
        raise ValueError(f"mask shape {observed.shape} differs from x shape {x.shape}")
    return np.concatenate([x, np.where(observed, 1.0, -1.0).astype(x.dtype)], axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--masks", action="store_true", help="also the classifier with missingness-mask channels")
    add_config_args(parser)
    args = parser.parse_args(argv)
    config = config_from_args(args)
    start = time.perf_counter()
    sites = load_sites_for(config.data)
    external = load_external(config, sites)
    _, pooled, normalizer, data = pooled_data(config, sites)
    tests = {"internal": (data.test_x, data.test_y)}
    raw_tests = {"internal": pooled.test}
    if external is not None:
        external, external_x = transform_external(external, pooled.train, normalizer)
        tests[EXTERNAL], raw_tests[EXTERNAL] = (external_x, external.y), external
    cnn = score_training_set((data.train_x, data.train_y), (data.tuning_x, data.tuning_y), tests, config.evaluation)
    gbm = gbm_benchmark(pooled, raw_tests, config.evaluation.seeds)
    models = {"classifier": cnn, "gbm": gbm}
    if args.masks:
        masked_tests = {name: (with_mask_channels(x, raw_tests[name].mask), y) for name, (x, y) in tests.items()}
        models["classifier+masks"] = score_training_set(
            (with_mask_channels(data.train_x, pooled.train.mask), data.train_y),
            (with_mask_channels(data.tuning_x, pooled.tuning.mask), data.tuning_y), masked_tests, config.evaluation)
    result = {
        "config": {"source": config.data.source, "channels": list(pooled.train.channels),
                   "length": pooled.train.length, "classifier": config.evaluation.classifier,
                   "seeds": list(config.evaluation.seeds), "train": len(data.train_y),
                   "external_records": 0 if external is None else external.num_records},
        **{test: {model: scores[test] for model, scores in models.items()} for test in tests},
        "seconds": time.perf_counter() - start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
    print(f"channels {','.join(pooled.train.channels)}; {len(data.train_y)} training records")
    print("| test | model | AUROC | AUPRC |\n|---|---|---|---|")
    for test in tests:
        for model in models:
            s = result[test][model]
            print(f"| {test} | {model} | {format_score(s, 'auroc')} | {format_score(s, 'auprc')} |")
    print(f"({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
