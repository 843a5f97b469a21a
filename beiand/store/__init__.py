"""The decision store (DESIGN.md, Fleet): closure orders, the regulator's commands, exemptions and
(room for) sponsor cases, as an append-only list of changes that every gateway follows.

Every change is a new row (:class:`Change`): a kind (``order``, ``exemption``, ``isms-command``, …),
a key within it (an order's target, a command's id), an operation (``set``: in force from now,
replacing what the key held; ``end``: lifted, deleted; ``note``: an event that changes no rule,
such as a commandSequence seen), its data, when, by whom and why, and the gateway that wrote it.
Rows are numbered by ``version`` in commit order (a writer takes the store's write lock and numbers
its rows after the last); the store's version is the number of its last row. Nothing is deleted
or changed (triggers refuse it): what was in force at any time is the fold of the rows up to then.

Two backends behind one interface (:class:`DecisionStore`), chosen by ``store.url``: an SQLite file
in ``daemon.state_dir`` (the default: one gateway needs nothing else) and PostgreSQL (psycopg 3) for
a fleet, whose writers ``NOTIFY`` the followers. This package knows rows only; what a row means is
the business of its folder (``policy.orders`` folds orders and exemptions, ``isms.store`` the
regulator's commands), and following the store is the supervisor's (``runtime.decisions``).
"""

from beiand.store.base import (
    KINDS,
    SCHEMA_VERSION,
    Change,
    DecisionStore,
    Entry,
    SchemaError,
    StoreError,
    Transaction,
)
from beiand.store.connect import StoreSettings, open_store, redact

__all__ = ["KINDS", "SCHEMA_VERSION", "Change", "DecisionStore", "Entry", "SchemaError", "StoreError", "StoreSettings",
           "Transaction", "open_store", "redact"]
