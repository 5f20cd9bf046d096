"""``python -m colqwen_pipeline.cli`` runs the command line."""

import sys

from colqwen_pipeline.cli import main

sys.exit(main())
