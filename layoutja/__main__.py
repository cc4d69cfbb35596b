"""`python -m layoutja` runs the command line."""

import sys

from layoutja.cli import main

sys.exit(main())
