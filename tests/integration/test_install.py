"""Install like an operator: the wheel alone in a new venv (no extras, no checkout), and the
Debian packages `make demo` needs.

Builds the wheel from this checkout, installs it into a fresh venv from the configured package
index, and runs what docs/install.md runs: --version, demo, install-files, check-config on the
installed example config. No traceback anywhere; the lab's extras are not pulled in.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload,no-any-return]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("whl")
    r = run([sys.executable, "-m", "pip", "wheel", str(ROOT), "-w", str(d), "--no-deps", "-q"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = d.glob("beiand-*.whl")
    return whl


def test_wheel_carries_the_operations_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("beiand/share/LICENSE", "beiand/share/systemd/beiand.service", "beiand/share/systemd/beiand-audit.timer",
              "beiand/share/rules/beiand.rules.yml", "beiand/share/dashboards/beiand.json", "beiand/share/examples/beiand.toml",
              "beiand/demo_data/demo.pcap", "beiand/demo_data/records.csv", "beiand/demo_data/inventory.csv"):
        assert f in names, f
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:") and "extra ==" not in ln]
    assert not [r for r in requires if re.search(r"scapy|pyroute2|aioquic", r)], requires  # the [lab] extra only
    assert "Apache License" in zipfile.ZipFile(wheel).read("beiand/share/LICENSE").decode()


def test_the_wheel_is_binary_with_the_compiled_hot_path_and_its_sources(wheel: Path) -> None:
    """Issue 21: `pip wheel .` compiles the hot path with the system compiler; the .py twins ship too."""
    from beiand import extensions

    names = set(zipfile.ZipFile(wheel).namelist())
    assert "-py3-none-any" not in wheel.name, wheel.name
    for mod in extensions.COMPILED:
        stem = mod.replace(".", "/")
        assert f"{stem}.py" in names, stem
        assert any(n.startswith(stem + ".cpython-") and n.endswith(".so") for n in names), stem
    assert "beiand/_extensions.json" in names


def test_without_a_compiler_the_build_warns_and_gives_pure_python(tmp_path: Path) -> None:
    """No gcc on the build host: a clear warning, and a wheel that runs the .py sources."""
    import os
    import shutil

    # a copy without build/: an earlier build's objects there would be reused, compiler or not
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", "build", "dist", ".git", "*.so", "_extensions.json", "__pycache__",
                                                             "*.egg-info", "test-artifacts", ".hypothesis", ".*_cache"))
    env = {**os.environ, "CC": "/bin/false"}
    r = run([sys.executable, "-m", "pip", "wheel", str(src), "-w", str(tmp_path), "--no-deps", "-v"], timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WARNING (beiand): building the extensions failed" in r.stdout + r.stderr
    (whl,) = tmp_path.glob("beiand-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert "beiand/net/decoder.py" in names and not [n for n in names if n.endswith(".so")], names


def test_plain_pip_install_of_the_wheel_runs_demo_and_check_config(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    r = run([sys.executable, "-m", "venv", str(venv)])
    assert r.returncode == 0, r.stderr
    r = run([str(venv / "bin/pip"), "install", "-q", str(wheel)], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    beiand = str(venv / "bin/beiand")
    cwd = tmp_path  # not the checkout: nothing may come from it

    def ok(*argv: str) -> str:
        r = run([beiand, *argv], cwd=cwd)
        assert r.returncode == 0 and "Traceback" not in r.stderr, f"beiand {' '.join(argv)}: {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-3000:]}"
        return r.stdout

    version = ok("--version").strip().splitlines()
    assert re.match(r"beiand \d+\.\d+\.\d+ \(Python 3\.\d+\.\d+ .*; kernel Linux \S+\)$", version[0]), version
    # The wheel was built with the system compiler: the hot path runs compiled (issue 21).
    assert version[1].startswith("hot path: compiled (Cython): net.link"), version
    shown = ok("demo", "--workdir", str(tmp_path / "demo"))
    assert "unfiled.example.xyz" in shown and "mismatch" in shown and "replay exit code 1" in shown
    ok("install-files", "--prefix", str(tmp_path / "root"))
    example = tmp_path / "root/usr/local/share/beiand/examples/beiand.toml"
    assert "ok" in ok("check-config", str(example))
    assert (tmp_path / "root/etc/beiand/beiand.toml").read_text() == example.read_text()
    assert (tmp_path / "root/etc/systemd/system/beiand.service").is_file()
    # The lab needs the [lab] extra and says so in one line.
    r = run([beiand, "lab"], cwd=cwd)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1 and "beiand[lab]" in r.stderr, r.stderr
    r = run([str(venv / "bin/python"), "-c", "import importlib.util as u; print([m for m in ('scapy', 'pyroute2', 'aioquic') "
             "if u.find_spec(m)])"], cwd=cwd)
    assert r.stdout.strip() == "[]", r.stdout


def test_system_deps_demo_installs_what_the_lab_calls() -> None:
    """`make demo` on a fresh Debian needs every tool the lab runs (iptables was missing once)."""
    text = (ROOT / "scripts/system-deps").read_text()
    demo = text[text.index("if [[ ${1:-} == demo ]]"):text.index("else")]
    checked = set(re.findall(r"command -v (\S+)", demo)) | ({"nftables-binding"} if "import nftables" in demo else set())
    # ip (namespaces), curl (the client), nft + python3-nftables and iptables (inline enforcement: NFQUEUE)
    assert {"ip", "curl", "nft", "iptables", "nftables-binding"} <= checked, checked
