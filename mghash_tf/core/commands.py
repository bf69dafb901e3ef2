"""The command-line error convention shared by ``mghash_tf``, ``export`` and ``edge_demo``:
bad input prints ``error: <message>`` on stderr and the process exits with status 2."""

from __future__ import annotations

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
