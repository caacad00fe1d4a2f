"""Real-only rows of the clinical evaluation (issue 13): the evaluation classifier vs gradient
boosting on summary statistics, on the internal test split and on an external cohort, for one
channel set per call. No generator is trained: these are the rows every synthetic-data claim is
read against.

    python -m simulations.classifier_benchmark --out runs/bench-p12 --source physionet2012 \\
        --path ../shared/data/physionet2012 --set evaluation.external-path=\\"../shared/data/physionet2012\\" \\
        --set data.channels=\\"HR,NISysABP,NIDiasABP,NIMAP,Temp,RespRate\\"

Writes ``<out>/benchmark.json`` ({"config", "internal": {model: summary}, "external": ...}) and
prints a markdown table. Splits, imputation (training medians) and normalization are the run's
(``centralized.pooled_data``, ``pipeline.external``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from simulations.study_cli import add_config_args, config_from_args
from tardiff_common.data.loading import load_sites_for
from tardiff_common.metrics.utility import score_training_set
from tardiff_common.pipeline.benchmark import gbm_benchmark
from tardiff_common.pipeline.centralized import pooled_data
from tardiff_common.pipeline.external import EXTERNAL, load_external, transform_external
from tardiff_common.report.markdown import format_score
from tardiff_common.report.run_folder import to_jsonable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
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
    result = {
        "config": {"source": config.data.source, "channels": list(pooled.train.channels),
                   "length": pooled.train.length, "classifier": config.evaluation.classifier,
                   "seeds": list(config.evaluation.seeds), "train": len(data.train_y),
                   "external_records": 0 if external is None else external.num_records},
        **{test: {"classifier": cnn[test], "gbm": gbm[test]} for test in tests},
        "seconds": time.perf_counter() - start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmark.json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
    print(f"channels {','.join(pooled.train.channels)}; {len(data.train_y)} training records")
    print("| test | model | AUROC | AUPRC |\n|---|---|---|---|")
    for test in tests:
        for model in ("classifier", "gbm"):
            s = result[test][model]
            print(f"| {test} | {model} | {format_score(s, 'auroc')} | {format_score(s, 'auprc')} |")
    print(f"({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
