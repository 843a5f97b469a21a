"""The ``beiand`` command line: ``cli/main.py`` builds the parser from one module per command group.

``beiand.cli:main`` is the console entry point; ``python -m beiand.cli`` runs it too.
"""

from __future__ import annotations

from beiand.cli.main import main

__all__ = ["main"]
