"""The demo's shipped samples (package data) against the generator that made them."""

from __future__ import annotations

from pathlib import Path

import pytest

from beiand.cli import main
from beiand.lab.demo import build


def _replay(files, capsys):
    """The replay's JSON lines, without the byte counts: a fresh TLS/QUIC handshake's size varies a
    little from run to run (aioquic's and OpenSSL's own choices), which connection records count."""
    import json

    main(["replay", files["pcap"], "--records", files["records"], "--inventory", files["inventory"], "--json"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    return "".join(json.dumps({k: v for k, v in d.items() if k not in ("octets", "packets")}, sort_keys=True) + "\n" for d in lines)


def test_shipped_samples_match_the_generator(tmp_path, capsys):
    pytest.importorskip("aioquic")
    from beiand.lab.demo_fixtures import generate

    shipped = build(tmp_path / "shipped")
    fresh = generate(tmp_path / "fresh")
    for role in ("records", "inventory"):
        assert Path(shipped[role]).read_bytes() == Path(fresh[role]).read_bytes(), f"regenerate beiand/demo_data ({role})"
    # The capture differs in TLS/QUIC randoms only: the decisions must be the same.
    a, b = _replay(shipped, capsys), _replay(fresh, capsys)
    assert a == b and a.count("\n") >= 10, "regenerate: python -m beiand.lab.demo_fixtures beiand/demo_data"


def test_demo_does_not_import_the_traffic_builders():
    import subprocess
    import sys

    code = ("import sys; from beiand.cli import main; import tempfile; main(['demo', '--workdir', tempfile.mkdtemp()]); "
            "bad = [m for m in ('aioquic', 'scapy', 'pyroute2', 'beiand.lab.traffic', 'beiand.lab.netns', 'beiand.lab.labservers') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
