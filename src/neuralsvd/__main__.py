"""``python -m neuralsvd``: the command line (what ``torchrun ... -m neuralsvd run PROBLEM`` starts)."""

import sys

from .cli import main

sys.exit(main())
