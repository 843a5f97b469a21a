"""One idc_command call, sans-IO (beiand/isms/service.py): any parameters give one of
ISMS.md's codes, never an exception; a valid call with one field spoiled gives that field's code."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beiand.isms.service import CommandService
from beiand.isms.store import CommandStore
from beiand.isms.wire.codes import CommandResult
from beiand.isms.wire.envelope import Keys
from beiand.isms.wire.profile import Profile
from tests import isms_double as dbl

KEYS = Keys(dbl.USER_KEY, dbl.ENC_KEY, dbl.IV, dbl.AUTH_KEY)
CODES = {int(c) for c in CommandResult}
FIELDS = ["idcId", "randVal", "pwdHash", "command", "commandHash", "commandType", "commandSequence", "encryptAlgorithm",
          "hashAlgorithm", "compressionFormat", "commandVersion"]


def service(tmp: Path) -> CommandService:
    return CommandService(dbl.IDC_ID, KEYS, Profile(), CommandStore(tmp))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(FIELDS), st.text(max_size=60), max_size=11))
def test_any_parameters_give_a_code(tmp_path: Path, params: dict[str, str]) -> None:
    ans = service(tmp_path).handle(params)
    assert int(ans.code) in CODES and ans.code != CommandResult.OK


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(FIELDS), st.text(max_size=30), st.integers(0, 2), st.integers(1, 2), st.integers(0, 2))
def test_one_spoiled_field(tmp_path: Path, field: str, junk: str, enc: int, alg: int, comp: int) -> None:
    svc = service(tmp_path / str(abs(hash((field, junk, enc, alg, comp)))))
    p = {k: str(v) for k, v in dbl.Smms("").params(dbl.command_xml(5, 2, [(1, "a.example", "")]).encode(), 2, enc=enc % 2,
                                                  alg=alg, comp=comp).items()}
    good = dict(p)
    p[field] = junk
    ans = svc.handle(p)
    if junk == good[field] or (field == "commandSequence" and junk.strip().isdigit()):
        return
    want = {"idcId": {999}, "randVal": {999, 1}, "pwdHash": {1}, "command": {2, 3, 4}, "commandHash": {3},
            "commandType": {5, 999}, "encryptAlgorithm": {999, 1, 2, 3}, "hashAlgorithm": {999, 1},
            "compressionFormat": {999, 4, 0}, "commandVersion": {999, 0}, "commandSequence": {999}}[field]
    assert int(ans.code) in want, (field, junk, ans)
