"""Read-side products: the one active-resource row (``resource.py``: ``/api/v1/observations``,
``beiand audit`` and, later, the regulator's reports), and the audit (``audit/``)."""
