"""`python -m eqvlp ...` is the same as the `eqvlp` command."""

import sys

from eqvlp.cli import main

sys.exit(main())
