"""The command-line conventions shared by ``mghash_tf``, ``export``, ``edge_demo`` and ``demo``:
bad input prints ``error: <message>`` on stderr and the process exits with status 2;
``-v/--verbose``, before or after the subcommand, brings back the native log lines
(:mod:`mghash_tf.core.native_logs`) and INFO messages."""

from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2
INPUT_ERRORS = (ValueError, OSError, ImportError)


def run_command(func, args, *, raise_exit: bool = False) -> int:
    """``func(args)``'s status (None counts as 0); :data:`EXIT_BAD_INPUT` with the message on
    stderr when it raises one of :data:`INPUT_ERRORS`. ``raise_exit``: raise that as SystemExit
    (code 2, the message as its text) for a ``main`` that is run as a script."""
    try:
        return func(args) or 0
    except INPUT_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        if not raise_exit:
            return EXIT_BAD_INPUT
        error = SystemExit(f"error: {e}")
        error.code = EXIT_BAD_INPUT
        raise error from None


def add_verbose_flag(parser: argparse.ArgumentParser, subparsers=(), *,
                     help: str = "show INFO messages and TensorFlow's and LiteRT's own log lines") -> None:
    """``-v/--verbose`` on ``parser`` (default False) and on each of ``subparsers``, where it
    only sets the flag when given (a subparser's default would override the main one)."""
    parser.add_argument("-v", "--verbose", action="store_true", help=help)
    for sub in subparsers:
        sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=help)
