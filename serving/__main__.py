"""`python -m serving ...`: the client's command line (serving/cli.py)."""

import sys

from serving.cli import main

sys.exit(main())
