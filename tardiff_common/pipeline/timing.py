"""Wall-clock and CPU seconds per named phase."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PhaseTimer"]


class PhaseTimer:
    """``with timer("diffusion"): ...`` adds the elapsed seconds to ``timer.seconds["diffusion"]``.

    Resumable: ``as_dict`` includes the seconds of a phase still in progress (a checkpoint taken
    mid-phase), and a timer built from a checkpoint's ``seconds`` and ``elapsed_before`` (its
    "total") adds to them.
    """

    def __init__(self, seconds: dict[str, float] | None = None, elapsed_before: float = 0.0) -> None:
        self.seconds: dict[str, float] = dict(seconds or {})
        self.elapsed_before = float(elapsed_before)
        self._start = time.perf_counter()
        self._current: tuple[str, float] | None = None
        self.cpu_seconds: dict[str, float] = {}
        self._cpu_start = time.process_time()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start, cpu_start = time.perf_counter(), time.process_time()
        self._current = (phase, start)
        try:
            yield
        finally:
            self._current = None
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
            self.cpu_seconds[phase] = self.cpu_seconds.get(phase, 0.0) + time.process_time() - cpu_start

    def as_dict(self) -> dict[str, float]:
        seconds = dict(self.seconds)
        if self._current is not None:
            phase, start = self._current
            seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - start
        total = self.elapsed_before + time.perf_counter() - self._start
        return {**{k: round(v, 3) for k, v in seconds.items()}, "total": round(total, 3)}

    def cpu_dict(self) -> dict[str, float]:
        """CPU seconds (user + system, every thread of this process) per finished phase, and the
        process's CPU seconds since the timer was built ("total"). On a shared machine these
        compare across runs where wall seconds do not."""
        total = time.process_time() - self._cpu_start
        return {**{k: round(v, 3) for k, v in self.cpu_seconds.items()}, "total": round(total, 3)}
