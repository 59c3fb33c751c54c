"""`python -m graphnet.bench`: the same as `graphnet bench` (the worker processes run this too)."""
import sys

from .runner import main

sys.exit(main())
