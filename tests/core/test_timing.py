"""PhaseTimer: wall and CPU seconds per phase, read from two clocks (faked here, so the test
checks the bookkeeping exactly and cannot be upset by other threads or a loaded machine)."""

from __future__ import annotations

import pytest

from tardiff_common.pipeline import timing
from tardiff_common.pipeline.timing import PhaseTimer


class FakeClocks:
    """perf_counter (wall) and process_time (CPU), advanced by hand."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 10.0

    def perf_counter(self) -> float:
        return self.wall

    def process_time(self) -> float:
        return self.cpu

    def spend(self, wall: float, cpu: float) -> None:
        self.wall += wall
        self.cpu += cpu


@pytest.fixture
def clocks(monkeypatch):
    fake = FakeClocks()
    monkeypatch.setattr(timing, "time", fake)
    return fake


def test_phase_timer_records_wall_and_cpu_seconds_per_phase(clocks):
    timer = PhaseTimer()
    with timer("busy"):
        clocks.spend(wall=2.0, cpu=1.9)
    with timer("idle"):
        clocks.spend(wall=3.0, cpu=0.1)
    clocks.spend(wall=0.5, cpu=0.25)  # between phases: in the totals only
    with timer("busy"):
        clocks.spend(wall=1.0, cpu=1.0)
    assert timer.as_dict() == {"busy": 3.0, "idle": 3.0, "total": 6.5}
    assert timer.cpu_dict() == {"busy": 2.9, "idle": 0.1, "total": 3.25}


def test_a_phase_in_progress_counts_in_the_wall_seconds_and_a_resumed_timer_adds_to_them(clocks):
    timer = PhaseTimer(seconds={"classifier": 4.0}, elapsed_before=10.0)
    with timer("diffusion"):
        clocks.spend(wall=5.0, cpu=4.0)
        assert timer.as_dict() == {"classifier": 4.0, "diffusion": 5.0, "total": 15.0}
        assert timer.cpu_dict() == {"total": 4.0}  # CPU seconds of finished phases only
    assert timer.cpu_dict() == {"diffusion": 4.0, "total": 4.0}
