"""``ConfigError``: every problem of a run configuration, each with the key it concerns.

One exception type for everything wrong with a config -- unknown keys, unreadable values,
out-of-range values, contradicting keys, an unreachable privacy target, an option the run
cannot honour -- raised when the config is read, before any work starts. It lists *all*
problems found, one per line as ``<key>: <message>``, so a user fixes them in one go.
It subclasses ``ValueError`` so existing ``except ValueError`` handlers still catch it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ConfigError", "Problem", "raise_if_any"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: the flat key (``"sampling.num-inference-steps"``) and why."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(ValueError):
    """Raised with one or more ``Problem``s; ``str(err)`` names every key."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems: tuple[Problem, ...] = tuple(problems)
        if not self.problems:
            raise ValueError("ConfigError needs at least one problem")
        if len(self.problems) == 1:
            text = f"invalid config: {self.problems[0]}"
        else:
            text = f"invalid config ({len(self.problems)} problems):\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(text)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.problems]


def raise_if_any(problems: Iterable[Problem]) -> None:
    """Raise ``ConfigError`` when ``problems`` is not empty."""
    problems = list(problems)
    if problems:
        raise ConfigError(problems)
