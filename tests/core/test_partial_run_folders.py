"""A run folder killed mid-write leaves no hidden ``.<name>.partial-*`` folder behind: SIGTERM
cleans up at once, SIGKILL's leftover is removed by the next run in the same folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tardiff_common.report.run_folder import atomic_run_folder

WRITER = """
import sys, time
from tardiff_common.report.run_folder import atomic_run_folder
with atomic_run_folder(sys.argv[1]) as staging:
    (staging / "half.txt").write_text("x")
    print("ready", flush=True)
    time.sleep(60)
"""
REPO = Path(__file__).resolve().parents[2]


def start_writer(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert len(list(out.parent.glob(".run.partial-*"))) == 1
    return proc


def test_sigterm_removes_the_staging_folder(tmp_path):
    proc = start_writer(tmp_path / "run")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_a_killed_runs_leftover_is_removed_by_the_next_run(tmp_path):
    proc = start_writer(tmp_path / "run")
    proc.kill()
    proc.wait(timeout=30)
    assert len(list(tmp_path.glob(".run.partial-*"))) == 1  # SIGKILL cannot be caught
    live = tmp_path / f".other.partial-{os.getpid()}-abc"  # a run still in progress is kept
    live.mkdir()
    with atomic_run_folder(tmp_path / "run2") as staging:
        (staging / "done.txt").write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "run2"]
