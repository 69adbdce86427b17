"""``python -m otcl``: the ``otcl`` command (see :mod:`otcl.cli`)."""

import sys

from otcl.cli import main

sys.exit(main())
