"""``python -m detector`` runs the CLI."""

import sys

from detector.cli import main

sys.exit(main())
