"""`python -m mtad` is the `mtad` command."""

import sys

from mtad.cli import main

sys.exit(main())
