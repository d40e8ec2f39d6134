#!/usr/bin/env python
"""``python tools/analysis.py ...``: the command line of the :mod:`tools.analysis` package
(the same as ``python -m tools.analysis ...`` from the repository root)."""
import os
import sys

if __name__ == "__main__":
    # As a script, sys.path[0] is tools/; the package is imported from the repository root.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from tools.analysis.__main__ import main

    main()
