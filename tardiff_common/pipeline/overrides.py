"""``--set key=value``: one parser for the CLI, the studies and the benchmarks.

A value is read with TOML's rules, as ``flwr run --run-config 'key=value'`` reads it:

    --set guidance.scale=50          -> 50        (int; the config turns it into its type)
    --set data.size-scale=0.5        -> 0.5       (float)
    --set output.resume=true         -> True      (bool)
    --set output.name='"my run"'     -> "my run"  (quotes stripped, "..." or '...')
    --set unet.dim-mults=[1,2,4]     -> [1, 2, 4] (array -> tuple field)

A value that is not valid TOML is taken as the bare text, which Flower would refuse but a
shell user expects: ``data.path=../data``, ``guidance.candidates=paper:10,x0:0.1``,
``unet.dim-mults=1,2,4`` (a comma-separated tuple, as pyproject writes it) and ``none``
(TOML has no null; an optional field reads "none" as None) all arrive as strings and are
typed by ``RunConfig.with_overrides``; so do TOML dates and inline tables (no config field
has those types: ``output.name=2024-01-01`` is the text).

``close_keys`` suggests known keys for a misspelt one (difflib); ``threads_arg`` is the
argparse type of every ``--threads`` flag (an integer >= 1).
"""

from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Iterable

import tomllib

from .config_errors import ConfigError, Problem

__all__ = ["parse_value", "parse_sets", "close_keys", "threads_arg", "toml_value"]

_SCALARS = (bool, int, float, str)


def parse_value(text: str) -> object:
    """The TOML value of ``text`` (see module doc), or ``text`` stripped when it is not TOML."""
    text = text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    if isinstance(value, list):
        if not all(isinstance(item, _SCALARS) for item in value):
            raise ValueError(f"{text!r}: an array may hold only numbers, booleans and strings")
        return value
    if not isinstance(value, _SCALARS):  # dates, times, inline tables: no config field has those types
        return text
    return value


def parse_sets(items: Iterable[str]) -> dict[str, object]:
    """{key: value} from ``["key=value", ...]``; raises ``ConfigError`` naming every bad item.
    A key given twice keeps its last value (as repeated ``--set`` flags read left to right)."""
    out: dict[str, object] = {}
    problems: list[Problem] = []
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(Problem(key or str(item), f"--set expects key=value, got {item!r}"))
            continue
        try:
            out[key] = parse_value(raw)
        except ValueError as err:
            problems.append(Problem(key, str(err)))
    if problems:
        raise ConfigError(problems)
    return out


def close_keys(key: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` known keys that look like ``key`` (difflib ratio >= 0.6), best first; a key
    whose last part matches exactly in another section is included too (``scale`` ->
    ``guidance.scale``)."""
    known = list(known)
    out = difflib.get_close_matches(key, known, n=n, cutoff=0.6)
    tail = key.rpartition(".")[2]
    out += [k for k in known if k.rpartition(".")[2] == tail and k not in out]
    return out[:n]


def threads_arg(text: str) -> int:
    """argparse ``type`` of every ``--threads`` flag: an integer >= 1 (else a usage error naming it)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expects an integer >= 1 (torch CPU threads), got {value}")
    return value


def toml_value(value: object) -> str:
    """``value`` written as a TOML scalar, as pyproject and ``flwr run --run-config`` take it
    (a list or tuple becomes the comma-separated string the config's tuple fields read)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        value = ",".join(str(item) for item in value)
    return json.dumps(str(value))  # a TOML basic string
