"""CU-lite uploads (ISMS.md §2): spool files to SMMS over SFTP (Debian's OpenSSH ``sftp``) or,
where the province uses it, FTP or FTPS (the standard library's ``ftplib``: ``FTP`` / ``FTP_TLS``,
explicit TLS with a protected data channel; the password from a file).

No SSH library: the system client (openssh-client) in batch mode, key authentication only,
strict host keys from ``<spool>/known_hosts`` when it exists. Each file goes up as ``.tmp`` and
is renamed there; an uploaded file moves to ``<spool>/sent/``; a failure leaves it for the next
round (every report tick until it goes). SMMS's answers in ``999/`` are read back by
:meth:`Uploader.answers` and acted on by :meth:`Uploader.settle` (before each upload round) per
:mod:`retry`'s policy: accepted, rejected for good (moved to ``<spool>/rejected/``), or sent
again (at most 3 tries, 600 s apart: ISMS.md §2).
"""

from __future__ import annotations

import contextlib
import ftplib
import logging
import os
import re
import ssl
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from beiand.isms.transport.retry import Tracker, Verdict, classify, decide

log = logging.getLogger(__name__)
_ANSWER = re.compile(r"(\d+)-(\d+\.xml)-(\d+)", re.ASCII)  # used with fullmatch: no trailing newline, ASCII digits


@dataclass
class Uploader:
    url: str  # sftp://user@host[:port]/dir, ftp://…, ftps://…
    key_file: Path | None
    spool: Path
    timeout: float = 60.0
    uploaded: int = 0
    failed: int = 0
    tls_context: ssl.SSLContext | None = None  # FTPS: the default (system CAs, hostname checked) unless given
    clock: Callable[[], float] = time.time
    verdicts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (DT, accepted | rejected | retried)

    def __post_init__(self) -> None:
        self.tracker = Tracker(self.spool / "verdicts.json")

    def _target(self) -> tuple[str, str, int, str]:
        u = urlsplit(self.url)
        if u.scheme not in ("sftp", "ftp", "ftps") or not u.hostname or not u.username:
            raise ValueError(f"{self.url}: expected sftp://, ftp:// or ftps://user@host[:port]/dir")
        return u.username, u.hostname, u.port or (22 if u.scheme == "sftp" else 21), u.path or "/"

    @property
    def is_ftp(self) -> bool:
        return self.url.startswith(("ftp://", "ftps://"))

    def _ftp(self) -> ftplib.FTP:
        user, host, port, _ = self._target()
        password = self.key_file.read_text(encoding="utf-8").strip() if self.key_file is not None else ""
        if self.url.startswith("ftps://"):
            # explicit FTPS (AUTH TLS), then PROT P: the password and the files never go in clear
            # the server's certificate: system CAs, or <spool>/ftps-ca.pem (the province's CA) when it exists
            ca = self.spool / "ftps-ca.pem"
            ctx = self.tls_context or ssl.create_default_context(cafile=str(ca) if ca.exists() else None)
            ftps = ftplib.FTP_TLS(timeout=self.timeout, context=ctx)
            ftps.connect(host, port)
            ftps.login(user, password)
            ftps.prot_p()
            return ftps
        ftp = ftplib.FTP(timeout=self.timeout)
        ftp.connect(host, port)
        ftp.login(user, password)
        return ftp

    def _upload_ftp(self, files: list[Path]) -> tuple[int, int]:
        _, _, _, base = self._target()
        done = 0
        try:
            with self._ftp() as ftp:
                made: set[str] = set()
                for p in files:
                    dt, day = p.parent.parent.name, p.parent.name
                    rd = f"{base.rstrip('/')}/{dt}/{day}"
                    for d in (f"{base.rstrip('/')}/{dt}", rd):
                        if d not in made:
                            made.add(d)
                            with contextlib.suppress(ftplib.error_perm):
                                ftp.mkd(d)
                    with open(p, "rb") as f:
                        ftp.storbinary(f"STOR {rd}/{p.name}.tmp", f)
                    ftp.rename(f"{rd}/{p.name}.tmp", f"{rd}/{p.name}")
                    self._sent(p)
                    done += 1
        except (OSError, ftplib.Error, EOFError, ssl.SSLError) as exc:
            log.error("isms: FTP upload to %s failed after %d file(s): %s", self.url, done, exc)
        self.uploaded += done
        self.failed += len(files) - done
        return done, len(files) - done

    def _sent(self, p: Path) -> None:
        dest = self.spool / "sent" / p.parent.parent.name / p.parent.name
        dest.mkdir(parents=True, exist_ok=True)
        os.replace(p, dest / p.name)
        self.tracker.uploaded(p.name, p.parent.parent.name, p.parent.name, self.clock())

    def settle(self) -> Counter[str]:
        """Act on SMMS's answers in ``999/`` (ISMS.md §2, :mod:`retry`): accepted; rejected for good
        (the file moves to ``<spool>/rejected/<DT>/<day>/``); or back into the spool for another try
        once 600 s have passed since the last (at most 3 tries, then rejected)."""
        now = self.clock()
        if not self.tracker.open():
            return Counter()
        best: dict[str, int] = {}
        for _dt, name, code in self.answers():
            old = best.get(name)
            best[name] = code if old is None else min((old, code), key=lambda c: classify(c).rank)
        done: Counter[str] = Counter()
        for name, code in best.items():
            t = self.tracker.get(name)
            if t is None or t.state != "sent":
                continue
            v = decide(code, t.tries, now - t.uploaded)
            src = self.spool / "sent" / t.dt / t.day / name
            if v is Verdict.ACCEPTED:
                self.tracker.close(name, "accepted", now)
            elif v is Verdict.REJECTED:
                log.error("isms: SMMS rejected %s/%s/%s for good: code %d (%s) after %d tr%s", t.dt, t.day, name, code,
                          classify(code).why, t.tries, "y" if t.tries == 1 else "ies")
                dest = self.spool / "rejected" / t.dt / t.day
                dest.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    os.replace(src, dest / name)
                self.tracker.close(name, "rejected", now)
            elif v is Verdict.RETRY:
                log.warning("isms: SMMS answered %s/%s with code %d (%s): sending it again (try %d)", t.dt, name, code,
                            classify(code).why, t.tries + 1)
                back = self.spool / t.dt / t.day
                back.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(src, back / name)
                except FileNotFoundError:
                    self.tracker.close(name, "rejected", now)
                    v = Verdict.REJECTED
            else:
                continue
            done[v.value] += 1
            self.verdicts[(t.dt, v.value)] += 1
        self.tracker.prune(now)
        self.tracker.save()
        return done

    def _sftp(self, batch: str) -> subprocess.CompletedProcess[str]:
        user, host, port, _ = self._target()
        kh = self.spool / "known_hosts"
        args = ["sftp", "-b", "-", "-P", str(port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "-o", f"StrictHostKeyChecking={'yes' if kh.exists() else 'accept-new'}",
                "-o", f"UserKnownHostsFile={kh}"]
        if self.key_file is not None:
            args += ["-i", str(self.key_file), "-o", "IdentitiesOnly=yes"]
        args.append(f"{user}@{host}")
        return subprocess.run(args, input=batch, capture_output=True, text=True, timeout=self.timeout, check=False)

    def upload_pending(self) -> tuple[int, int]:
        """(uploaded, failed) for every file waiting in the spool."""
        with contextlib.suppress(OSError, ValueError):
            self.settle()
        files = sorted(p for p in self.spool.glob("[0-9]*/*/*.xml"))
        if not files:
            return 0, 0
        if self.is_ftp:
            try:
                return self._upload_ftp(files)
            finally:
                self.tracker.save()
        _, _, _, base = self._target()
        lines = []
        dirs = set()
        for p in files:
            dt, day = p.parent.parent.name, p.parent.name
            rd = f"{base.rstrip('/')}/{dt}/{day}"
            for d in (f"{base.rstrip('/')}/{dt}", rd):
                if d not in dirs:
                    dirs.add(d)
                    lines.append(f"-mkdir {d}")
            lines.append(f'put "{p}" "{rd}/{p.name}.tmp"')
            lines.append(f'rename "{rd}/{p.name}.tmp" "{rd}/{p.name}"')
        try:
            r = self._sftp("\n".join(lines) + "\n")
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("isms: upload to %s failed: %s", self.url, exc)
            self.failed += len(files)
            return 0, len(files)
        if r.returncode != 0:
            log.error("isms: upload to %s failed (sftp exit %d): %s", self.url, r.returncode, r.stderr.strip()[-500:])
            self.failed += len(files)
            return 0, len(files)
        for p in files:
            self._sent(p)
        self.tracker.save()
        self.uploaded += len(files)
        return len(files), 0

    def answers(self) -> list[tuple[int, str, int]]:
        """SMMS's verdicts in ``999/``: (DT, file name, code) (ISMS.md §2: ``999/<DT>-<name>-<code>``)."""
        _, _, _, base = self._target()
        if self.is_ftp:
            try:
                with self._ftp() as ftp:
                    names = [n.rsplit("/", 1)[-1] for n in ftp.nlst(f"{base.rstrip('/')}/999")]
            except (OSError, ftplib.Error, EOFError, ssl.SSLError):
                return []
            return [(int(m.group(1)), m.group(2), int(m.group(3))) for n in sorted(names) if (m := _ANSWER.fullmatch(n))]
        with tempfile.TemporaryDirectory() as tmp:
            r = self._sftp(f"-get {base.rstrip('/')}/999/* {tmp}/\n")
            if r.returncode != 0:
                return []
            out = []
            for n in sorted(os.listdir(tmp)):
                m = _ANSWER.fullmatch(n)
                if m:
                    out.append((int(m.group(1)), m.group(2), int(m.group(3))))
            return out
