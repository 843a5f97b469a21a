"""The one error root: every error beiand raises on purpose derives from ``BeiandError``.

A caller that wants "anything beiand refused" catches ``BeiandError``; each package still raises
its own class (``ConfigError``, ``DecodeError``, ``ImportRefused``, ...) with the file, line and
field in the message. Classes that also were ``ValueError`` or ``OSError`` keep that base, so
existing ``except ValueError`` clauses still catch them.
"""

from __future__ import annotations


class BeiandError(Exception):
    """The root of beiand's own errors."""


class FileProblems(BeiandError, ValueError):
    """An input file refused whole: ``problems`` lists every ``file:line: field: reason``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
