"""Command-line pieces shared by the studies: the data-source options and the config they make."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tardiff_common.pipeline.config import RunConfig, preset

__all__ = ["add_config_args", "config_from_args"]


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """--preset, --source, --path, --set KEY=VALUE (repeatable), --threads."""
    parser.add_argument("--preset", default="default")
    parser.add_argument("--source", default=None, help="data.source (default: the preset's, the embedded generator)")
    parser.add_argument("--path", default=None, help="data.path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The preset with --source / --path / --set applied; sets torch's CPU threads (>= 1)."""
    torch.set_num_threads(max(1, args.threads))
    overrides = dict(s.split("=", 1) for s in args.set)
    if args.source:
        overrides["data.source"] = args.source
    if args.path:
        overrides["data.path"] = str(Path(args.path).resolve())
    return preset(args.preset).with_overrides(overrides)
