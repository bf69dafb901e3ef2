"""``python -m demo``: train -> export -> index -> query on the embedded sample (``make demo``)."""

import argparse
import logging
import sys

from demo.run import run_demo


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--epochs", type=int, default=None, help="override the demo's epoch count")
    parser.add_argument("--verbose", type=int, default=2)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    run_demo(args.out, epochs=args.epochs, verbose=args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
