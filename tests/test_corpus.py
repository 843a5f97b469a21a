"""suricata-verify style corpus: each case a capture, the decisions it must give, and a README.

One parametrised test runs them all; a completeness test fails when a kind, a verdict or a
reason has no case.
"""

import json
from pathlib import Path

import pytest

from beiand.capture import read_capture
from beiand.model import Kind, VerdictKind
from beiand.net.decoder import Decoder, DecoderConfig
from beiand.policy import REASONS, Policy, PolicyConfig
from beiand.policy.inventory import load_inventory
from beiand.records import build_index, load_file
from beiand.runtime.pipeline import Pipeline

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(p for p in CORPUS.iterdir() if p.is_dir() and (p / "input.pcap").exists())
VARIANTS = {"": "示例云计算有限公司", "noprovider": ""}


def expectations():
    for case in CASES:
        for exp in sorted(case.glob("expect*.jsonl")):
            variant = exp.name[len("expect."):-len(".jsonl")] if exp.name != "expect.jsonl" else ""
            yield case, variant, [json.loads(line) for line in exp.read_text(encoding="utf-8").splitlines() if line]


def decide_all(case: Path, provider: str):
    index = build_index(load_file(CORPUS / "records.csv"))
    policy = Policy(index, load_inventory(CORPUS / "inventory.csv"), PolicyConfig(
        provider=provider, allow_names=frozenset({"status.example-cdn.com"}), allow_suffixes=("trusted.example",),
        allow_prefixes=("198.51.100.250/32",), access_pending_grace_days=30))
    got = []

    class Connections:  # connection records (issue 19), in the order the pipeline writes them
        def on_connection(self, rec):
            got.append({"kind": rec.kind, "name": rec.name, "server": rec.server_ip, "verdict": rec.verdict,
                        "reason": rec.reason, "action": rec.action, "direction": rec.direction})

    pipe = Pipeline(Decoder(DecoderConfig(conns=True)), policy, [Connections()])
    d = pipe.decoder
    obs = []
    for ts, lt, frame in read_capture(case / "input.pcap"):
        obs += d.feed(ts, frame, lt)
    obs += d.flush()
    for o in obs:
        dec = pipe.observe(o)
        if dec is not None:
            server = o.answers[0] if o.kind is Kind.DNS_ANSWER else o.server_ip
            got.append({"kind": o.kind.value, "name": o.name, "server": server, "verdict": dec.verdict.verdict.value,
                        "reason": dec.verdict.reason, "action": dec.action.value})
    return got


@pytest.mark.parametrize(("case", "variant", "expected"), list(expectations()),
                         ids=[f"{c.name}{'-' + v if v else ''}" for c, v, _ in expectations()])
def test_case(case, variant, expected):
    assert (case / "README.md").read_text(encoding="utf-8").strip()
    assert decide_all(case, VARIANTS[variant]) == expected


def test_corpus_is_complete():
    seen = [e for _, _, exp in expectations() for e in exp]
    missing = ({f"kind {k.value}" for k in Kind} - {f"kind {e['kind']}" for e in seen}) | (
        {f"verdict {v.value}" for v in VerdictKind} - {f"verdict {e['verdict']}" for e in seen}) | (
        {f"reason {r}" for r in REASONS} - {f"reason {e['reason']}" for e in seen})
    assert not missing, f"no corpus case for: {sorted(missing)}"


# -- the compiled twin (issue 21): byte-identical output with and without the extensions ---------


def _replay_json(files: list[Path], records: Path, inventory: Path, no_ext: str, *extra: str) -> bytes:
    import os
    import subprocess
    import sys

    env = {**os.environ, "BEIAND_NO_EXTENSIONS": no_ext}
    r = subprocess.run([sys.executable, "-m", "beiand.cli", "replay", *map(str, files), "--records", str(records),
                        "--inventory", str(inventory), "--json", "--workers", "1", *extra],
                       capture_output=True, timeout=600, env=env)
    assert r.returncode in (0, 1), r.stderr.decode()[-2000:]
    return r.stdout


def test_corpus_replay_is_byte_identical_with_and_without_extensions():
    files = [c / "input.pcap" for c in CASES]
    for extra in ((), ("--all-ports",)):
        compiled = _replay_json(files, CORPUS / "records.csv", CORPUS / "inventory.csv", "0", *extra)
        assert compiled.count(b"\n") > 20
        assert compiled == _replay_json(files, CORPUS / "records.csv", CORPUS / "inventory.csv", "1", *extra)


def test_bench_capture_replay_is_byte_identical_with_and_without_extensions(tmp_path):
    import subprocess
    import sys

    pcap = tmp_path / "mix.pcap"
    gen = Path(__file__).resolve().parents[1] / "bench" / "gen_capture.py"
    subprocess.run([sys.executable, str(gen), str(pcap), "--packets", "20000"], check=True, capture_output=True, timeout=600)
    rec, inv = Path(f"{pcap}.records.csv"), Path(f"{pcap}.inventory.csv")
    compiled = _replay_json([pcap], rec, inv, "0")
    assert compiled.count(b"\n") > 500
    assert compiled == _replay_json([pcap], rec, inv, "1")
