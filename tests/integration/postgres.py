"""A real PostgreSQL 15 (Debian's ``postgresql``) for the tests: ``initdb`` and ``pg_ctl`` in a temp
directory, run as the ``postgres`` user the package creates (initdb refuses root), listening on
loopback (or inside a network namespace), never the machine's own cluster."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    def __init__(self, directory: Path, listen: str = "127.0.0.1", netns: str | None = None, ssl: bool = False) -> None:
        self.dir = directory
        self.port = free_port()
        self.listen = listen
        self.netns = netns
        self.ssl = ssl
        self.data = directory / "data"
        self.user = pwd.getpwnam("postgres")
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, self.user.pw_uid, self.user.pw_gid)
        for p in directory.parents:  # the postgres user must reach its directory
            if p == Path("/"):
                break
            with contextlib.suppress(OSError):
                os.chmod(p, os.stat(p).st_mode | 0o011)
        self._run([str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                   "--no-sync", "--locale=C.UTF-8"])
        conf = ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        if ssl:
            conf += ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"]
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n".join(conf) + "\n")
        with open(self.data / "pg_hba.conf", "w") as f:
            f.write("local all all trust\nhost all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n")

    @staticmethod
    def available() -> bool:
        return (BIN / "initdb").exists() and shutil.which("runuser") is not None

    def _run(self, argv: list[str]) -> None:
        def enter() -> None:
            if self.netns:
                from beiand.lab.netns import setns

                setns(self.netns)

        r = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, timeout=120,
                           preexec_fn=enter if self.netns else None)
        if r.returncode:
            raise RuntimeError(f"{argv[0]}: exit {r.returncode}: {r.stdout[-2000:]} {r.stderr[-2000:]}")

    def start(self) -> None:
        self._run([str(BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-l", str(self.dir / "log"),
                   "-o", f"-p {self.port} -k {self.dir} -c listen_addresses={self.listen}", "start"])

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run([str(BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-m", "fast", "stop"])

    def url(self, host: str = "127.0.0.1", db: str = "postgres") -> str:
        return f"postgresql://postgres@{host}:{self.port}/{db}"

    def create_db(self, name: str) -> str:
        """A database of its own (one per test), on the loopback URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(db=name)

    def log(self) -> str:
        try:
            return (self.dir / "log").read_text(errors="replace")
        except OSError:
            return ""


def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    if not Postgres.available():
        pytest.fail("PostgreSQL 15 is not installed (scripts/system-deps installs postgresql)")
    pg = Postgres(tmp_path_factory.mktemp("pg"))
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


def wait_for(cond: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
