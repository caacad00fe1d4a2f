"""pyproject's ``[tool.flwr.app.config]``, generated from ``RunConfig`` (the one source of defaults).

Flower reads a run's defaults from that TOML table; ``RunConfig()`` (its sections are the
method's own config dataclasses) holds the same defaults in Python. Instead of keeping the two
in step by hand, the table is *rendered* from ``RunConfig().to_flat()`` plus ``APP_OVERRIDES``
(the few values the Flower app sets on purpose), and a test fails when pyproject differs:

    python scripts/sync_app_config.py            # rewrite the table in pyproject.toml
    python scripts/sync_app_config.py --check    # exit 1 when it is out of date

Comments are kept: a comment block right above a table header and a comment after a value
stay attached to that header / key when the table is regenerated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from .config import RunConfig
from .overrides import toml_value

__all__ = ["APP_OVERRIDES", "app_config_defaults", "render_app_config", "sync_pyproject", "TABLE"]

TABLE = "tool.flwr.app.config"
APP_OVERRIDES: dict[str, object] = {"federation.num-sites": 3}  # the simulation's three hospitals

_HEADER = re.compile(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*=.*?(\s+#.*)?$")


def app_config_defaults() -> dict[str, object]:
    """{flat key: value} the Flower app starts from: ``RunConfig()`` with ``APP_OVERRIDES``."""
    return RunConfig().with_overrides(APP_OVERRIDES).to_flat()


def _comments(text: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """From an existing table: {table name: comment lines above its header} and
    {flat key: trailing comment}."""
    above: dict[str, list[str]] = {}
    trailing: dict[str, str] = {}
    pending: list[str] = []
    table = ""
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            table = header.group(1).strip()
            above[table] = pending
            pending = []
        elif line.strip().startswith("#"):
            pending.append(line.rstrip())
        else:
            pending = [] if line.strip() else pending
            key = _KEY.match(line)
            if key and table.startswith(TABLE):
                prefix = table[len(TABLE):].lstrip(".")
                trailing[f"{prefix}.{key.group(1)}" if prefix else key.group(1)] = (key.group(2) or "").strip()
    return above, trailing


def render_app_config(flat: Mapping[str, object], *, previous: str = "") -> str:
    """The TOML text of ``[tool.flwr.app.config]`` and its sub-tables for ``flat`` (keys
    "<section>.<field>" or top-level), with the comments of ``previous`` (an older rendering)."""
    above, trailing = _comments(previous)
    tables: dict[str, list[tuple[str, object]]] = {"": []}
    for key, value in flat.items():
        section, _, name = key.rpartition(".")
        tables.setdefault(section, []).append((name, value))
    blocks = []
    for section, items in tables.items():
        name = f"{TABLE}.{section}" if section else TABLE
        lines = [*above.get(name, []), f"[{name}]"]
        for field_name, value in items:
            comment = trailing.get(f"{section}.{field_name}" if section else field_name, "")
            lines.append(f"{field_name} = {toml_value(value)}" + (f"  {comment}" if comment else ""))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _table_span(lines: list[str]) -> tuple[int, int]:
    """[start, end) of the app-config tables in pyproject's lines, the comment block above
    the first header included."""
    headers = [(i, m.group(1).strip()) for i, line in enumerate(lines) if (m := _HEADER.match(line))]
    ours = [i for i, name in headers if name == TABLE or name.startswith(TABLE + ".")]
    if not ours:
        raise ValueError(f"pyproject.toml has no [{TABLE}] table")
    start, last = ours[0], ours[-1]
    if any(i > start and i < last and i not in ours for i, _ in headers):
        raise ValueError(f"the [{TABLE}] tables in pyproject.toml are not contiguous")
    end = next((i for i, _ in headers if i > last), len(lines))
    while start > 0 and lines[start - 1].strip().startswith("#"):
        start -= 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    if end < len(lines):  # keep the comment block of the next table with that table
        while end > start and lines[end - 1].strip().startswith("#"):
            end -= 1
        while end > start and not lines[end - 1].strip():
            end -= 1
    return start, end


def sync_pyproject(path: str | Path, *, check: bool = False) -> bool:
    """Render the app-config tables into ``path`` (pyproject.toml). Returns True when the file
    already held exactly that text; with ``check`` the file is never written."""
    path = Path(path)
    text = path.read_text()
    lines = text.splitlines()
    start, end = _table_span(lines)
    old = "\n".join(lines[start:end]) + "\n"
    new = render_app_config(app_config_defaults(), previous=old)
    if new == old:
        return True
    if not check:
        rest = "\n".join(lines[end:])
        path.write_text("\n".join(lines[:start]) + ("\n" if start else "") + new + ("\n" + rest if rest else "")
                        + ("\n" if rest and text.endswith("\n") else ""))
    return False
