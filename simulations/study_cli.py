"""Command-line pieces shared by the studies: the data-source options and the config they make."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tardiff_common.pipeline.config import RunConfig, preset
from tardiff_common.pipeline.overrides import parse_sets, threads_arg

__all__ = ["add_config_args", "config_from_args"]


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """--preset, --source, --path, --set KEY=VALUE (repeatable, TOML-typed), --threads (>= 1)."""
    parser.add_argument("--preset", default="default")
    parser.add_argument("--source", default=None, help="data.source (default: the preset's, the embedded generator)")
    parser.add_argument("--path", default=None, help="data.path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=threads_arg, default=None, help="torch CPU threads (default: the config's)")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The preset with --source / --path / --set / --threads applied and validated (``ConfigError``
    naming every bad key); sets torch's CPU threads to the config's ``threads``."""
    overrides = parse_sets(args.set)
    if args.source:
        overrides["data.source"] = args.source
    if args.path:
        overrides["data.path"] = str(Path(args.path).resolve())
    if args.threads is not None:
        overrides["threads"] = args.threads
    config = preset(args.preset).with_overrides(overrides)
    torch.set_num_threads(config.threads)
    return config
