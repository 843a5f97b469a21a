"""``beiand audit``: passive (from the access log or a capture) and active (DNS, TLS, HTTP)
scans for what is out of line, and their reports (REGULATIONS.md O3, O4, O8, O10)."""

from beiand.report.audit.findings import KINDS, Finding
from beiand.report.audit.passive import Resource, findings, resources

__all__ = ["KINDS", "Finding", "Resource", "findings", "resources"]
