"""Which ``[isms]`` settings a reload (SIGHUP, ``POST /api/v1/reload``) applies, and which need a restart.

Applied in place by ``IsmsRuntime.reload``: the secrets (re-read from ``secrets_dir`` on every
reload, so rotating a key needs only a SIGHUP), the profile, ``idc_id``, ``house_id``,
``gateways`` (the reports' scope in the fleet's copy), the intervals,
``mode``/``ack_url``/``upload_url``/``upload_key_file`` (the uploader is rebuilt), and the TLS
certificate and key (loaded into the listening socket's context: new connections get the new
certificate). Each worker is restarted by the reload anyway, so the enforcer's view of the
commands picks up the profile's ``subdomains`` too.

Needing a restart, and why:

| key | why |
|---|---|
| ``enabled`` | the endpoint, timers and the workers' rules are set up at start only |
| ``listen``, ``path`` | bound at start; a rebind would drop a call in flight, or fail with nothing listening |
| ``tls_cert``/``tls_key`` set ↔ unset | plain HTTP ↔ TLS is a different listening socket (same reason) |
| ``spool_dir`` | files already waiting in the old spool (and its sequence counter and verdict tracker) would be orphaned |

A reload that changes one of these keeps the old value, logs it, and lists it under
``restart_needed`` in ``beiand isms status``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

RESTART_KEYS = ("enabled", "listen", "path", "spool_dir")


def restart_needed(old: Any, new: Any) -> list[str]:
    """The keys of the ``[isms]`` section (dataclasses) whose change a reload cannot apply."""
    out = [k for k in RESTART_KEYS if getattr(old, k) != getattr(new, k)]
    if (old.tls_cert is None) != (new.tls_cert is None):
        out.append("tls_cert")
    return out


def changed(old: Any, new: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)]
