"""``python -m atlas.cli``, as ``python -m atlas`` and the ``atlas`` command."""

import sys

from atlas.cli import main

sys.exit(main())
