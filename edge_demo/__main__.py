"""``python -m edge_demo``: see :mod:`edge_demo.cli`."""

from edge_demo.cli import main

raise SystemExit(main())
