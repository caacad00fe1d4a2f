"""PhaseTimer: wall and CPU seconds per phase."""

from __future__ import annotations

import time

from tardiff_common.pipeline.timing import PhaseTimer


def test_phase_timer_records_wall_and_cpu_seconds():
    timer = PhaseTimer()
    with timer("busy"):
        end = time.process_time() + 0.05
        while time.process_time() < end:  # CPU work
            pass
    with timer("idle"):
        time.sleep(0.05)  # wall time, (almost) no CPU
    with timer("busy"):
        pass
    wall, cpu = timer.as_dict(), timer.cpu_dict()
    assert set(wall) == set(cpu) == {"busy", "idle", "total"}
    assert cpu["busy"] >= 0.04 and wall["idle"] >= 0.04
    assert cpu["idle"] < wall["idle"]
    assert cpu["total"] >= cpu["busy"]
