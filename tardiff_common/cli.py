"""``tardiff`` command line.

    tardiff centralized --data synthetic --out runs/NAME [--preset default] [--set key=value ...]
    tardiff data summary --source eicu_yaib --path ../shared/data/eicu_demo
    tardiff config [--preset NAME] [--set key=value ...]   # print every config key with its value

``--set key=value`` values are read with TOML's rules, as ``flwr run --run-config`` reads them
(``tardiff_common.pipeline.overrides``); a bad config exits 2 with every problem and its key.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .pipeline.overrides import threads_arg

__all__ = ["main"]


def _build_config(args: argparse.Namespace):
    """The preset with ``--set`` (TOML-typed, ``pipeline.overrides``) and the command's own flags
    applied, checked by ``pipeline.validation`` (``ConfigError`` naming every bad key)."""
    from .pipeline.config import preset
    from .pipeline.overrides import parse_sets

    overrides = parse_sets(args.set or [])
    if getattr(args, "data", None):
        overrides.setdefault("data.source", args.data)
    if getattr(args, "data_path", None):
        overrides.setdefault("data.path", args.data_path)
    if getattr(args, "threads", None) is not None:
        overrides["threads"] = args.threads
    return preset(args.preset).with_overrides(overrides)


def _cmd_centralized(args: argparse.Namespace) -> int:
    import torch

    from .data.loading import load_sites_for
    from .pipeline.centralized import run_centralized
    from .pipeline.validation import check_sites, refuse_unsupported

    config = _build_config(args)
    refuse_unsupported(config, "centralized")
    torch.set_num_threads(config.threads)
    out = Path(args.out or f"runs/centralized-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists():
        raise ValueError(f"run folder {str(out)!r} already exists; choose another --out (nothing was overwritten)")
    sites = load_sites_for(config.data)
    check_sites(config, sites, "centralized")
    metrics = run_centralized(config, sites, out, progress=not args.quiet)
    rows = metrics["tstr"]
    print("\nTSTR (pooled real test split):")
    for name, s in rows.items():
        print(f"  {name:10s} AUROC {s['auroc']:.3f}  AUPRC {s['auprc']:.3f}  minority F1 {s['minority_f1']:.3f}")
    print(f"report: {out / 'report.md'}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    config = _build_config(args)
    for key, value in config.to_flat().items():
        print(f"{key} = {value!r}")
    return 0


def _cmd_data_summary(args: argparse.Namespace) -> int:
    from .data.loading import load_sites_for, summarize_sites
    from .pipeline.config import DataConfig

    sites = load_sites_for(DataConfig(source=args.source, path=args.path or "", task=args.task, site_by=args.site_by,
                                      min_site_records=args.min_site_records))
    print(summarize_sites(sites))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tardiff", description="Target-oriented synthetic ICU time series (TarDiff).")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("centralized", help="train, guide, sample and evaluate on pooled data")
    c.add_argument("--data", default=None, help="data source: synthetic (default), eicu, eicu_yaib, mimic3, physionet2012")
    c.add_argument("--data-path", default=None, help="folder holding the source's files")
    c.add_argument("--out", default=None, help="run folder to create (must not exist)")
    c.add_argument("--preset", default="default", help="tiny | default | paper")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    c.add_argument("--threads", type=threads_arg, default=None,
                   help="torch CPU threads, >= 1 (default: the config's threads key)")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=_cmd_centralized)

    k = sub.add_parser("config", help="print the resolved configuration")
    k.add_argument("--preset", default="default")
    k.add_argument("--set", action="append", metavar="KEY=VALUE")
    k.set_defaults(func=_cmd_config)

    d = sub.add_parser("data", help="data utilities")
    dsub = d.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("summary", help="per-site records, prevalence and missingness of a source")
    s.add_argument("--source", required=True)
    s.add_argument("--path", default="")
    s.add_argument("--task", default="mortality")
    s.add_argument("--site-by", default="default")
    s.add_argument("--min-site-records", type=int, default=20)
    s.set_defaults(func=_cmd_data_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        print(f"tardiff: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
