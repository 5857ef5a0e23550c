"""`python -m eqvlp.benchmarking losses|attention ...`: see `eqvlp.benchmarking.cli`."""

import sys

from eqvlp.benchmarking.cli import main

sys.exit(main())
