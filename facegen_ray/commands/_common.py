"""Shared CLI plumbing: --config/--set/--root options and config loading."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from facegen_ray.config import FacegenConfig, load_config


def add_config_args(p: argparse.ArgumentParser, config_file: bool = True) -> None:
    """--config (unless config_file=False: the command names its config another way), --set, --root."""
    if config_file:
        p.add_argument(
            "--config",
            "-c",
            default=None,
            help="config YAML (sections: storage, data, model, loss, train, eval, serve, retrain, gate, feedback)",
        )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set train.num_workers=2 (repeatable)",
    )
    p.add_argument(
        "--root", default=None, help="storage root (local folder or s3://bucket/prefix); same as --set storage.root=..."
    )


def add_action_parsers(sub: argparse._SubParsersAction, name: str, help: str, doc: str | None):
    """`facegen NAME ACTION ...`: a command whose first argument picks one of its actions;
    returns the subparsers to add the actions to (an action is required)."""
    p = sub.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest=f"{name}_command", metavar="ACTION")
    actions.required = True
    return actions


def config_from_args(args: argparse.Namespace, updates: Mapping[str, Any] | None = None) -> FacegenConfig:
    """Load the config: file, then --root and the command's own options (`updates`: typed
    values by dotted key), then --set (which wins)."""
    typed: dict[str, Any] = {}
    if getattr(args, "root", None):
        typed["storage.root"] = args.root
    typed.update(updates or {})
    return load_config(getattr(args, "config", None), list(getattr(args, "overrides", []) or []), updates=typed)


def option_updates(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, Any]:
    """Command options that mirror config fields -> {config key: value}, for the ones given.

    mapping: argparse attribute name -> config key, e.g. {"resolution": "data.resolution"}."""
    return {key: getattr(args, attr) for attr, key in mapping.items() if getattr(args, attr, None) is not None}
