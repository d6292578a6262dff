"""`facegen` entry point: parses arguments and calls the command modules (thin on purpose)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from facegen_ray.config import ConfigError
from facegen_ray.errors import UserError
from facegen_ray.registry import RegistryError
from facegen_ray.storage import StorageError

# One line per subcommand module (facegen_ray/commands/<name>.py defines register()).
COMMAND_MODULES = [
    "facegen_ray.commands.prepare",
    "facegen_ray.commands.train",
    "facegen_ray.commands.serve",
    "facegen_ray.commands.generate",
    "facegen_ray.commands.detect",
    "facegen_ray.commands.promote",
    "facegen_ray.commands.evaluate",
    "facegen_ray.commands.attributes",
    "facegen_ray.commands.directions",
    "facegen_ray.commands.quickstart",
    "facegen_ray.commands.dashboards",
    "facegen_ray.commands.retrain",
    "facegen_ray.commands.feedback",
    "facegen_ray.commands.tune",
    "facegen_ray.commands.cluster",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facegen", description="Distributed StyleGAN face generation on Ray")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    try:
        return int(args.func(args) or 0)
    except (ConfigError, UserError, RegistryError, StorageError) as e:
        print(f"facegen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"facegen {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
