"""``python -m lowbit.cli``: the same as the ``lowbit`` console script."""

import sys

from lowbit.cli import main

sys.exit(main())
