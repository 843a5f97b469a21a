"""Issue 17: hostile inventory files are refused with ``file:line: field: reason``, never a traceback."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beiand.policy.inventory import InventoryError, load_inventory

HEADER = b"prefix,account,site,state,mode\n"
CELLS = st.sampled_from([b"198.51.100.0/24", b"2001:db8::/32", b"10.0.0.1/8", b"acct", b"", b"active", b"enforce", b"\"",
                         b"\x00", b"\xff\xfe", b"#", b"a" * 300, b"\"x\ny\"", b"[[prefix]]", b"prefix = 1"])


def check(path) -> None:
    try:
        load_inventory(path)
    except InventoryError as exc:
        assert all(p.startswith(str(path)) for p in exc.problems), exc.problems


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(CELLS, max_size=7), max_size=8), st.sampled_from(["inv.csv", "inv.toml"]), st.booleans())
def test_fuzzed_inventories_are_loaded_or_refused(tmp_path, rows, name, header):
    p = tmp_path / name
    body = b"\n".join(b",".join(r) for r in rows)
    if name.endswith(".toml"):
        body = b"".join(b'[[prefix]]\nprefix = "' + (r[0] if r else b"") + b'"\naccount = "a"\n' for r in rows) + body
    p.write_bytes((HEADER if header else b"") + body)
    check(p)


def test_a_huge_field_is_refused_with_the_file_and_line(tmp_path):
    p = tmp_path / "inv.csv"
    p.write_bytes(HEADER + b"198.51.100.0/24,\"" + b"a" * (2 << 20) + b"\",x,active,\n")
    check(p)
