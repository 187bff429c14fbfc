#!/usr/bin/env python
"""Execute notebooks/NN_*.py in order with papermill into notebooks/_executed/.

A thin front end to safecrs_core.pipeline.main; see ``--help``. Example:

    python scripts/run_notebooks.py --profile smoke --only 01
"""
import sys

from safecrs_core.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
