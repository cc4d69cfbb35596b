"""`python -m layoutja` runs the command line."""

import sys

from layoutja.cli.main import main

sys.exit(main())
