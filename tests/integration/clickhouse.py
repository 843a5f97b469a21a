"""A real ClickHouse server (Debian's clickhouse-server) on loopback, for the tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from beiand.lab.netns import in_netns, setns

CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><console>1</console></logger>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <listen_host>{listen}</listen_host>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <user_files_path>{d}/user_files/</user_files_path>
    <format_schema_path>{d}/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>5368709</mark_cache_size>
    <uncompressed_cache_size>8589934</uncompressed_cache_size>{cluster}
</yandex>
"""
# One node as a cluster of one shard and one replica, replicated through ZooKeeper (Debian's
# 18.16 has no built-in Keeper): what the cluster DDL of docs/access-log.md needs.
CLUSTER = """
    <zookeeper><node><host>127.0.0.1</host><port>{zk}</port></node></zookeeper>
    <macros><shard>01</shard><replica>r1</replica></macros>
    <remote_servers><beiand_test><shard><replica><host>127.0.0.1</host><port>{tcp}</port></replica></shard></beiand_test>
    </remote_servers>"""
USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
    <users><default><password></password><networks><ip>{network}</ip></networks>
        <profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ClickHouse:
    def __init__(self, directory: Path, netns: str | None = None, zookeeper: int = 0, listen: str = "127.0.0.1") -> None:
        self.dir = directory
        self.netns = netns  # run inside this network namespace (beside a daemon started there)
        # 0.0.0.0: reached from other namespaces (gateways of a fleet) too; only in a namespace of its own
        self.http = free_port()
        self.tcp = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        cluster = CLUSTER.format(zk=zookeeper, tcp=self.tcp) if zookeeper else ""
        (directory / "config.xml").write_text(CONFIG.format(http=self.http, tcp=self.tcp, d=directory, cluster=cluster,
                                                            listen=listen))
        (directory / "users.xml").write_text(USERS.format(network="127.0.0.1" if listen == "127.0.0.1" else "0.0.0.0/0"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.http}"

    @staticmethod
    def available() -> bool:
        return shutil.which("clickhouse-server") is not None

    def start(self) -> None:
        with open(self.dir / "server.log", "ab") as logf:
            ns = self.netns
            self.proc = subprocess.Popen(["clickhouse-server", f"--config-file={self.dir / 'config.xml'}"],
                                         stdout=logf, stderr=subprocess.STDOUT, preexec_fn=(lambda: setns(ns)) if ns else None)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.query("SELECT 1")
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"clickhouse-server exited: {(self.dir / 'server.log').read_text()[-2000:]}") from None
                time.sleep(0.2)
        raise RuntimeError("clickhouse-server did not answer within 60 s")

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            (self.proc.kill if kill else self.proc.terminate)()
            self.proc.wait(60)
            self.proc = None

    def query(self, sql: str) -> str:
        def q() -> str:
            req = urllib.request.Request(self.url + "/", data=sql.encode())
            with urllib.request.urlopen(req, timeout=10) as r:
                return str(r.read().decode())

        return in_netns(self.netns, q) if self.netns else q()


class ZooKeeper:
    """Debian's ``zookeeper`` (standalone, on loopback): the coordination ReplicatedMergeTree needs."""

    CLASSPATH = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/*"

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return Path("/usr/share/java/zookeeper.jar").exists() and shutil.which("java") is not None

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "zookeeper.log", "ab") as logf:
            self.proc = subprocess.Popen(["java", "-Dzookeeper.admin.enableServer=false", "-cp", self.CLASSPATH, "org.apache.zookeeper.server.ZooKeeperServerMain",
                                          str(self.port), str(self.dir / "data")], stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"srvr")
                    if s.recv(100).startswith(b"Zookeeper version"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"zookeeper exited: {(self.dir / 'zookeeper.log').read_text()[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError("zookeeper did not answer within 60 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(60)
            self.proc = None


def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouse]:
    """One server for a test module: its ``server`` fixture yields from this."""
    if not ClickHouse.available():
        pytest.fail("clickhouse-server is not installed (scripts/system-deps installs it)")
    ch = ClickHouse(tmp_path_factory.mktemp("clickhouse"))
    ch.start()
    yield ch
    ch.stop()
