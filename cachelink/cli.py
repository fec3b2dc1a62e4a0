"""The ``cachelink`` command: ``demo``, plus ``dev-cluster`` and ``real-nodes`` from the development tools.

Each sub-command lives in its own module and registers itself through ``add_parser``; this module only
wires them together. ``dev-cluster`` and ``real-nodes`` come from the development tools (``cachelink_dev``,
``devtools/``), which the runtime wheel and the image do not carry: without them those sub-commands are
simply absent.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: module paths of the sub-command providers; each exposes ``add_parser(subparsers) -> None``
SUBCOMMAND_MODULES = ("cachelink.demo", "cachelink_dev.devcluster.cli", "cachelink_dev.realnodes.cli")


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available sub-command registered."""
    parser = argparse.ArgumentParser(prog="cachelink", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cachelink`` command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
