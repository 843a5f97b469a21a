"""CU-lite uploads (ISMS.md §2): spool files to SMMS over SFTP (Debian's OpenSSH ``sftp``) or,
where the province uses it, FTP (the standard library's ``ftplib``; the password from a file).

No SSH library: the system client (openssh-client) in batch mode, key authentication only,
strict host keys from ``<spool>/known_hosts`` when it exists. Each file goes up as ``.tmp`` and
is renamed there; an uploaded file moves to ``<spool>/sent/``; a failure leaves it for the next
round (ISMS.md: 3 tries 600 s apart; here every report tick until it goes). SMMS's answers in
``999/`` are read back by :func:`answers`.
"""

from __future__ import annotations

import contextlib
import ftplib
import logging
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)
_ANSWER = re.compile(r"^(\d+)-(\d+\.xml)-(\d+)$")


@dataclass
class Uploader:
    url: str  # sftp://user@host[:port]/dir
    key_file: Path | None
    spool: Path
    timeout: float = 60.0
    uploaded: int = 0
    failed: int = 0

    def _target(self) -> tuple[str, str, int, str]:
        u = urlsplit(self.url)
        if u.scheme not in ("sftp", "ftp") or not u.hostname or not u.username:
            raise ValueError(f"{self.url}: expected sftp://user@host[:port]/dir or ftp://user@host[:port]/dir")
        return u.username, u.hostname, u.port or (22 if u.scheme == "sftp" else 21), u.path or "/"

    def _ftp(self) -> ftplib.FTP:
        user, host, port, _ = self._target()
        password = self.key_file.read_text(encoding="utf-8").strip() if self.key_file is not None else ""
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
        except (OSError, ftplib.Error, EOFError) as exc:
            log.error("isms: FTP upload to %s failed after %d file(s): %s", self.url, done, exc)
        self.uploaded += done
        self.failed += len(files) - done
        return done, len(files) - done

    def _sent(self, p: Path) -> None:
        dest = self.spool / "sent" / p.parent.parent.name / p.parent.name
        dest.mkdir(parents=True, exist_ok=True)
        os.replace(p, dest / p.name)

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
        files = sorted(p for p in self.spool.glob("[0-9]*/*/*.xml"))
        if not files:
            return 0, 0
        if self.url.startswith("ftp://"):
            return self._upload_ftp(files)
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
        self.uploaded += len(files)
        return len(files), 0

    def answers(self) -> list[tuple[int, str, int]]:
        """SMMS's verdicts in ``999/``: (DT, file name, code) (ISMS.md §2: ``999/<DT>-<name>-<code>``)."""
        _, _, _, base = self._target()
        if self.url.startswith("ftp://"):
            try:
                with self._ftp() as ftp:
                    names = [n.rsplit("/", 1)[-1] for n in ftp.nlst(f"{base.rstrip('/')}/999")]
            except (OSError, ftplib.Error, EOFError):
                return []
            return [(int(m.group(1)), m.group(2), int(m.group(3))) for n in sorted(names) if (m := _ANSWER.match(n))]
        with tempfile.TemporaryDirectory() as tmp:
            r = self._sftp(f"-get {base.rstrip('/')}/999/* {tmp}/\n")
            if r.returncode != 0:
                return []
            out = []
            for n in sorted(os.listdir(tmp)):
                m = _ANSWER.match(n)
                if m:
                    out.append((int(m.group(1)), m.group(2), int(m.group(3))))
            return out
