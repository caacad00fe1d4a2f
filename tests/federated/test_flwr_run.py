"""One real `flwr run .` simulation (SuperLink + Ray, 3 SuperNodes) on a tiny config.

It goes through scripts/flwr_simulation.sh, which starts its own SuperLink in a throwaway
FLWR_HOME and stops it on exit; the test then checks that nothing it started is still alive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

TINY = (
    'data.size-scale=0.12 data.length=16 classifier.kind="gru" classifier.hidden=8 classifier.num-layers=1 '
    'unet.dim=8 unet.dim-mults="1,2" unet.attention-levels="1" unet.heads=2 unet.head-dim=4 unet.groups=4 '
    "diffusion.num-steps=20 sampling.num-inference-steps=4 federation.classifier-rounds=1 "
    'federation.diffusion-rounds=1 evaluation.seeds="0" evaluation.epochs=1 evaluation.tsrtr-ratios="1.0"'
)


def _flower_processes() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "flower-superlink|flower-superexec|flwr-simulation"],
                         capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def test_flwr_run_simulation_completes(tmp_path):
    before = _flower_processes()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    overrides = f'{TINY} output.dir="{tmp_path}" output.name="smoke"'
    start = time.time()
    proc = subprocess.run(
        ["bash", "scripts/flwr_simulation.sh", "--supernodes", "3", "--run-config", overrides],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "finished:completed" in proc.stdout
    metrics = json.loads((tmp_path / "smoke" / "metrics.json").read_text())
    assert metrics["federated"] is True and len(metrics["sites"]) == 3
    assert time.time() - start < 600
    deadline = time.time() + 20  # processes exit asynchronously after the script's stop
    while not _flower_processes() <= before and time.time() < deadline:
        time.sleep(0.5)
    assert _flower_processes() <= before, "the simulation left Flower processes running"
