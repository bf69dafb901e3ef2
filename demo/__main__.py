"""``python -m demo``: train -> export -> index -> query on the embedded sample (``make demo``)."""

import argparse
import logging
import sys

from demo.run import run_demo
from mghash_tf.cli import progress_mode
from mghash_tf.core.commands import add_verbose_flag
from mghash_tf.tf_logs import start_tensorflow


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--epochs", type=int, default=None, help="override the demo's epoch count")
    parser.add_argument("--progress", type=progress_mode, default=2,
                        help="Keras progress: 0 silent, 1 bar, 2 a line per epoch (default), auto")
    parser.add_argument("--log-level", default="WARNING")
    add_verbose_flag(parser, help="show TensorFlow's and LiteRT's own log lines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    start_tensorflow(args.verbose)
    run_demo(args.out, epochs=args.epochs, verbose=args.progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
