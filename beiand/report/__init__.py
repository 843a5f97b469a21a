"""Read-side products (DESIGN.md): reports built from what beiand decided and logged: the one
active-resource row (``resource.py``: ``/api/v1/observations``, ``beiand audit``, the regulator's
reports), the audit (``audit/``), and ``isms/``, the regulator's ISMS interface (ISMI; docs/isms.md).
"""
