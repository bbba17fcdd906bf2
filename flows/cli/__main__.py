"""``python -m flows.cli``: the same command as ``pretrainflow``."""

import sys

from flows.cli.main import main

sys.exit(main())
