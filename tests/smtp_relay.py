"""A real SMTP relay for the notice tests (aiosmtpd): STARTTLS required before AUTH, one login,
every accepted message kept (in memory, and as a file in ``--dir`` when run as a program, e.g.
inside a lab namespace: ``python -m tests.smtp_relay --port P --dir D``).

``refuse`` makes it answer every RCPT with 550 (a relay that refuses), ``down()`` stops it (a relay
that cannot be reached)."""

from __future__ import annotations

import argparse
import email
import email.policy
import socket
import ssl
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from beiand.lab.labservers import make_cert

USER, PASSWORD = "beiand", "relay-pa55"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Handler:
    def __init__(self, out_dir: Path | None = None) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.out_dir = out_dir
        self.refuse = False
        self.cond = threading.Condition()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.cond:
            self.messages.append(msg)  # type: ignore[arg-type]
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            if self.out_dir is not None:
                p = self.out_dir / f"{len(self.messages):04d}.eml"
                p.with_suffix(".tmp").write_bytes(envelope.content)
                p.with_suffix(".tmp").rename(p)
            self.cond.notify_all()
        return "250 Message accepted"

    def wait(self, n: int, timeout: float = 20.0) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.messages)} message(s) came, {n} expected")
                self.cond.wait(left)
            return list(self.messages)


def _auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and data.login == USER.encode() and data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


class Relay:
    """The relay on 127.0.0.1 (a free port), with its own CA (``ca_file``)."""

    def __init__(self, directory: Path, out_dir: Path | None = None, port: int = 0) -> None:
        cert, key = make_cert(directory, ["localhost", "127.0.0.1"])
        self.ca_file = directory / "lab-ca.pem"
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.handler = Handler(out_dir)
        self.port = port or free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, server_hostname="localhost",
                                     tls_context=ctx, require_starttls=True, auth_required=True, authenticator=_auth,
                                     auth_require_tls=True)

    def __enter__(self) -> Relay:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def down(self) -> None:
        try:
            self.controller.stop()
        except AssertionError:
            pass  # stopped already


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True, help="messages go here as NNNN.eml; lab-ca.pem is written here")
    ap.add_argument("--ready", required=True)
    a = ap.parse_args()
    d = Path(a.dir)
    with Relay(d, d, a.port):
        Path(a.ready).write_text("ok")
        threading.Event().wait()


if __name__ == "__main__":
    main()
