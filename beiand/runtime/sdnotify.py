"""systemd's notify protocol (``sd_notify``: READY, RELOADING, STOPPING, WATCHDOG) without libsystemd."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("beiand")


def sd_notify(message: str) -> bool:
    """Send a state line to systemd (``NOTIFY_SOCKET``); no libsystemd needed."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    # Never block: a manager that does not read its socket must not stall the daemon (a full
    # datagram queue would otherwise block sendto, and with it the event loop).
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as s:
        try:
            s.sendto(message.encode(), path)
        except BlockingIOError:
            log.warning("sd_notify: the manager's socket is full; %r dropped", message.split("\n")[0])
            return False
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
            return False
    return True


def watchdog_interval() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2
