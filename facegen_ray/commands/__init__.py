"""One module per `facegen` subcommand; each defines `register(subparsers)`.

A module sets `func(args) -> int` on its parser; cli.py lists the modules.
"""
