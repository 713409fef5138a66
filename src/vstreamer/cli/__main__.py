"""``python -m vstreamer.cli`` runs the command line."""

import sys

from vstreamer.cli import main

sys.exit(main())
