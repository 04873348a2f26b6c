"""The `vantrack` command line: one entry point, one subcommand per capability.

Each subcommand lives in its own module, which registers its argparse parser through a
`register(subparsers)` function and sets `func` to the handler. This module only wires
them together.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vantrack.gateway import cli as gateway_cli

from . import bench, demo, flash, fwbuild, gpssim, mprig, nmeadecode, udprelay

DESCRIPTION = """\
vantrack: tracking for last-mile delivery vans.
An ESP32 + GPS running our MicroPython firmware in each van, a CoAP/CBOR gateway in the depot.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vantrack",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (
        demo, gateway_cli, nmeadecode, gpssim, bench, udprelay, fwbuild, flash, mprig,
    ):  # fmt: skip
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `vantrack nmea-decode log | head` closes our stdout early: not an error.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
