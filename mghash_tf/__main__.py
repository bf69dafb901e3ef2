import sys

from mghash_tf.cli import main

sys.exit(main())
