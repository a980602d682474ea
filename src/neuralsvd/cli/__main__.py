"""``python -m neuralsvd.cli``: the same command as ``python -m neuralsvd``."""

import sys

from .main import main

sys.exit(main())
