"""Regenerate pyproject's [tool.flwr.app.config] from RunConfig (tardiff_common.pipeline.app_config).

    python scripts/sync_app_config.py            # rewrite the table
    python scripts/sync_app_config.py --check    # exit 1 when pyproject.toml is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tardiff_common.pipeline.app_config import TABLE, sync_pyproject

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 when out of date")
    parser.add_argument("--pyproject", type=Path, default=PYPROJECT)
    args = parser.parse_args(argv)
    current = sync_pyproject(args.pyproject, check=args.check)
    if current:
        print(f"[{TABLE}] in {args.pyproject.name} is up to date")
        return 0
    if args.check:
        print(f"[{TABLE}] in {args.pyproject.name} differs from RunConfig; run python scripts/sync_app_config.py",
              file=sys.stderr)
        return 1
    print(f"rewrote [{TABLE}] in {args.pyproject.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
