"""Quiet native log lines of TensorFlow, absl and LiteRT in the command lines; ``--verbose``
brings them back.

``TF_CPP_MIN_LOG_LEVEL`` (0 all, 1 no INFO, 2 no WARNING, 3 no ERROR) is the switch, so a user
who set it keeps their choice. TensorFlow's C++ logging obeys it, except for lines written before
absl's logging starts (the oneDNN notice ``I0000 ... port.cc:153] oneDNN custom operations are
on``, printed twice by ``import tensorflow``); LiteRT's own logger (``INFO: Created TensorFlow
Lite XNNPACK delegate for CPU.``) and the int8 converter's ``fully_quantize: ...`` obey nothing.
All of them write to file descriptor 2 directly, so :func:`filtered_stderr` captures descriptor 2
around the calls known to print them and writes back every line that is not a log record below
the level. TensorFlow-free: the callers import what prints.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager

ENV = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LEVEL = 2
# Python loggers that TensorFlow and Keras write through ("WARNING tensorflow: 5 out of the
# last 7 calls ... triggered tf.function retracing").
PYTHON_LOGGERS = ("absl", "tensorflow")
# (pattern, severity) of native log records: 0 info, 1 warning, 2 error.
_RECORDS = (
    (re.compile(rb"WARNING: All log messages before absl::InitializeLog\(\) is called"), 0),
    # absl's prefix: severity letter, MMDD, time (before absl starts: 00:00:<epoch seconds>),
    # thread id, file:line]; e.g. "I0000 00:00:1796231466.974427    6470 port.cc:153] ".
    (re.compile(rb"I\d{4} [\d:.]+ +\d+ \S+:\d+\] "), 0),
    (re.compile(rb"W\d{4} [\d:.]+ +\d+ \S+:\d+\] "), 1),
    (re.compile(rb"E\d{4} [\d:.]+ +\d+ \S+:\d+\] "), 2),
    (re.compile(rb"INFO: "), 0),  # LiteRT's minimal logger
    (re.compile(rb"WARNING: "), 1),
    (re.compile(rb"ERROR: "), 2),
    (re.compile(rb"fully_quantize: \d+, inference_type: "), 0),  # the int8 converter's printf
)
# Descriptor 2 is one per process: two threads redirecting it at once would lose the stream.
_LOCK = threading.RLock()


def configure(verbose: bool) -> None:
    """Call at a command line's start, before TensorFlow or LiteRT loads: quiet unless
    ``verbose`` (``TF_CPP_MIN_LOG_LEVEL`` defaults to 2, unless already set; TensorFlow's and
    absl's Python loggers show errors only)."""
    if not verbose:
        os.environ.setdefault(ENV, str(QUIET_LEVEL))
    for name in PYTHON_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)


def min_level() -> int:
    """``TF_CPP_MIN_LOG_LEVEL`` as TensorFlow reads it (unset or not a number: 0)."""
    try:
        return int(os.environ.get(ENV, "0"))
    except ValueError:
        return 0


def is_hidden(line: bytes, level: int) -> bool:
    """Whether ``line`` is a native log record below ``level`` (anything else is kept)."""
    for pattern, severity in _RECORDS:
        if pattern.match(line):
            return severity < level
    return False


@contextmanager
def filtered_stderr():
    """Inside: what is written to descriptor 2 is held back, and written back on exit less the
    log records :func:`is_hidden` at :func:`min_level`. A no-op at level 0."""
    level = min_level()
    if level <= 0:
        yield
        return
    with _LOCK, tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = memoryview(b"".join(line for line in held if not is_hidden(line, level)))
            while kept:
                kept = kept[os.write(2, kept):]
