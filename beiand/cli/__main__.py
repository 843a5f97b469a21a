"""``python -m beiand.cli``: the same as the ``beiand`` command."""

import sys

from beiand.cli.main import main

sys.exit(main())
