"""``python -m otcl``: the ``otcl`` command (see [`otcl.cli`][otcl.cli])."""

import sys

from otcl.cli import main

sys.exit(main())
