"""``python -m oodguard.cli``."""

import sys

from oodguard.cli import main

sys.exit(main())
