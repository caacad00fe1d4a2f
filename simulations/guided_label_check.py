"""Diagnostic: how the trained classifier theta* sees guided and unguided samples.

For a finished centralized run (its ``config.json`` and ``checkpoint.npz``) this draws
``--samples`` balanced series with the same noise for unguided sampling and for each guidance
candidate, and prints, per set,

* mean p_theta*(y = 1 | x) for the records conditioned on y = 1 and on y = 0,
* theta*'s accuracy against the conditioning labels and its mean log loss,
* the mean influence I(x) = <grad_theta L(x, y), g> that guidance maximizes, and
* the standard deviation of the normalized values (a drift off the data's scale).

A guided set whose records theta* assigns to the *other* label (accuracy far below unguided's,
loss far above it) is a set that teaches a classifier the wrong label: TSTR below chance.

    python -m simulations.guided_label_check runs/<name>/centralized --candidates paper:10,x0:0.2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from tardiff_common.checkpoint import TrainedTarDiff
from tardiff_common.influence.guidance import parse_candidates
from tardiff_common.pipeline.config import RunConfig
from tardiff_common.pipeline.phases import influence_of, synthesize

__all__ = ["label_check", "main"]


def label_check(run: Path, candidates: str, samples: int) -> list[dict]:
    """One row per set (unguided first): the statistics listed in the module docstring."""
    config = RunConfig().with_overrides(json.loads((run / "config.json").read_text()), validate=False)
    models = TrainedTarDiff.load(run / "checkpoint.npz", config)
    with np.load(run / "synthetic.npz") as saved:  # the run's series length (data.length 0 = the source's)
        length = int(saved["unguided_x"].shape[-1])
    rows = []
    for candidate in [None, *(c for c in parse_candidates(candidates) if c.scale)]:
        guidance = None if candidate is None else config.guidance.with_candidate(candidate)
        x, y = synthesize(models.ema.shadow, models.classifier, models.direction, num_samples=samples,
                          positive_fraction=0.5, length=length, config=config, site_index=0, guidance=guidance)
        with torch.no_grad():
            p = torch.sigmoid(models.classifier(torch.as_tensor(x)).reshape(-1)).numpy().astype(np.float64)
        eps = 1e-7
        loss = -(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))
        rows.append({
            "set": "unguided" if candidate is None else f"{candidate.form}:{candidate.scale:g}",
            "p_pos_given_y1": float(p[y == 1].mean()), "p_pos_given_y0": float(p[y == 0].mean()),
            "accuracy": float(((p > 0.5) == (y == 1)).mean()), "log_loss": float(loss.mean()),
            "influence": float(influence_of(models.classifier, models.direction, x, y).mean()),
            "x_std": float(x.std()),
        })
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a centralized run folder (config.json, checkpoint.npz)")
    parser.add_argument("--candidates", default="paper:10,x0:0.05,x0:0.2,normalized:0.3")
    parser.add_argument("--samples", type=int, default=128)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = label_check(args.run, args.candidates, args.samples)
    print("| set | p(y=1) given y=1 | p(y=1) given y=0 | accuracy | log loss | influence | x std |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['p_pos_given_y1']:.3f} | {r['p_pos_given_y0']:.3f} | {r['accuracy']:.3f} "
              f"| {r['log_loss']:.3f} | {r['influence']:.3f} | {r['x_std']:.3f} |")
    return rows


if __name__ == "__main__":
    main()
