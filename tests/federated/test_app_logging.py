"""What the ServerApp and ClientApp processes print through Flower's logger: every line once, and
a run-config error as one line naming the key (not a traceback). Each case runs in a fresh
interpreter, as Flower's app processes do (logging set-up is process-wide)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


@pytest.mark.parametrize("module", ["server.app", "client.app"])
def test_each_flower_log_line_is_printed_once(module):
    # opacus is imported by the DP code paths (lazily, in some); its import calls logging.basicConfig,
    # which gave the root logger a second console handler next to Flower's own
    text = _python(f"import {module}, opacus, logging\n"
                   "from flwr.common.logger import log\n"
                   "log(logging.INFO, 'marker-line-%s', 'x')\n"
                   "log(logging.WARNING, 'marker-warning-%s', 'y')\n")
    assert text.count("marker-line-x") == 1, text
    assert text.count("marker-warning-y") == 1, text


def test_serverapp_logs_a_config_error_as_one_line_naming_the_key():
    # the same call Flower makes when the ServerApp raises (flwr.simulation.app / run_serverapp)
    text = _python("import logging, server.app\n"
                   "from flwr.common.logger import log\n"
                   "from tardiff_common.pipeline.config import RunConfig\n"
                   "try:\n"
                   "    RunConfig().with_overrides({'diffusion.num-steps': -5})\n"
                   "except Exception as ex:\n"
                   "    log(logging.ERROR, '%s raised an exception', 'ServerApp', exc_info=ex)\n"
                   "try:\n"
                   "    raise RuntimeError('a bug keeps its traceback')\n"
                   "except Exception as ex:\n"
                   "    log(logging.ERROR, '%s raised an exception', 'ServerApp', exc_info=ex)\n")
    lines = [line for line in text.splitlines() if "diffusion.num-steps" in line]
    assert len(lines) == 1, text
    assert "ServerApp stopped: invalid config: diffusion.num-steps: " in lines[0], text
    assert text.count("Traceback") == 1 and "RuntimeError: a bug keeps its traceback" in text, text
