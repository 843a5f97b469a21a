"""The ISMI envelope (beiand/isms/wire/envelope.py) against ISMS.md §2 and the test double."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from beiand.isms.wire.codes import CommandResult, Compression, EncryptAlgorithm, FileResult, HashAlgorithm
from beiand.isms.wire.envelope import EnvelopeError, Keys, check_pwd, decompress, pack, pwd_hash, unpack
from tests import isms_double as dbl

KEYS = Keys(dbl.USER_KEY, dbl.ENC_KEY, dbl.IV, dbl.AUTH_KEY)
COMBOS = [(e, a, c) for e in EncryptAlgorithm for a in HashAlgorithm for c in Compression]


def test_known_vector() -> None:
    # ISMS.md §2: userKey1 + Rnd0123456789abcdEF → MTEwMWYz… (MD5, base64 of the lowercase hex)
    assert pwd_hash(b"userKey1", "Rnd0123456789abcdEF", HashAlgorithm.MD5) == "MTEwMWYzM2UyNTBiNGQ3ZTNlODU4MTIyNDE5NGE1YWM="
    assert check_pwd(b"userKey1", "Rnd0123456789abcdEF", HashAlgorithm.MD5, "MTEwMWYzM2UyNTBiNGQ3ZTNlODU4MTIyNDE5NGE1YWM=")
    assert not check_pwd(b"userKey2", "Rnd0123456789abcdEF", HashAlgorithm.MD5, "MTEwMWYzM2UyNTBiNGQ3ZTNlODU4MTIyNDE5NGE1YWM=")


def test_sha1_pwdhash_raw_digest_accepted() -> None:
    # ISMS.md §2 (≠): the PHP CU puts the raw SHA-1 digest in pwdHash
    raw = base64.b64encode(hashlib.sha1(b"userKey1abc").digest()).decode()
    assert check_pwd(b"userKey1", "abc", HashAlgorithm.SHA1, raw)
    assert check_pwd(b"userKey1", "abc", HashAlgorithm.SHA1, pwd_hash(b"userKey1", "abc", HashAlgorithm.SHA1))


@pytest.mark.parametrize(("enc", "alg", "comp"), COMBOS)
def test_double_packs_beiand_unpacks(enc: EncryptAlgorithm, alg: HashAlgorithm, comp: Compression) -> None:
    xml = b"<command><commandId>1</commandId></command>"
    payload, phash = dbl.Smms("").pack(xml, int(enc), int(alg), int(comp))
    assert unpack(payload, phash, KEYS, enc, alg, comp) == xml


@pytest.mark.parametrize(("enc", "alg", "comp"), COMBOS)
def test_beiand_packs_double_unpacks(enc: EncryptAlgorithm, alg: HashAlgorithm, comp: Compression) -> None:
    xml = b"<illegalWeb><idcId>x</idcId></illegalWeb>"
    env = pack(xml, KEYS, enc, alg, comp)
    file = (f"<fileLoad><idcId>x</idcId><dataUpload>{env.payload}</dataUpload><encryptAlgorithm>{int(enc)}</encryptAlgorithm>"
            f"<hashAlgorithm>{int(alg)}</hashAlgorithm><compressionFormat>{int(comp)}</compressionFormat>"
            f"<dataHash>{env.payload_hash}</dataHash><commandVersion>2.0</commandVersion></fileLoad>").encode()
    assert dbl.unpack_file(file) == xml


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from(COMBOS))
@example(b"", (EncryptAlgorithm.AES_CBC, HashAlgorithm.MD5, Compression.ZIP))
def test_round_trip(xml: bytes, combo: tuple[EncryptAlgorithm, HashAlgorithm, Compression]) -> None:
    enc, alg, comp = combo
    if comp is Compression.NONE and (xml[:4] == b"PK\x03\x04" or xml[:2] == b"\x1f\x8b"):
        xml = b" " + xml  # an uncompressed payload that starts with a magic is sniffed as compressed (ISMS.md §7)
    env = pack(xml, KEYS, enc, alg, comp)
    assert unpack(env.payload, env.payload_hash, KEYS, enc, alg, comp) == xml


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=400), st.text(max_size=80), st.sampled_from(COMBOS))
def test_junk_raises_one_error_type(payload: str, phash: str, combo: tuple[EncryptAlgorithm, HashAlgorithm, Compression]) -> None:
    try:
        unpack(payload, phash, KEYS, *combo)
    except EnvelopeError as exc:
        assert exc.command_code in (CommandResult.DECRYPT, CommandResult.HASH, CommandResult.UNZIP)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=2000), st.integers(0, 10_000), st.integers(0, 255))
def test_bit_flip_is_caught(xml: bytes, pos: int, bit: int) -> None:
    env = pack(xml, KEYS, EncryptAlgorithm.AES_CBC, HashAlgorithm.SHA1, Compression.GZIP)
    raw = bytearray(base64.b64decode(env.payload))
    raw[pos % len(raw)] ^= bit or 1
    with pytest.raises(EnvelopeError) as ei:
        unpack(base64.b64encode(bytes(raw)).decode(), env.payload_hash, KEYS, EncryptAlgorithm.AES_CBC, HashAlgorithm.SHA1,
               Compression.GZIP)
    assert ei.value.stage in ("decrypt", "hash", "unzip")


def test_failure_codes_per_column() -> None:
    env = pack(b"<a/>", KEYS, EncryptAlgorithm.AES_CBC, HashAlgorithm.MD5, Compression.ZIP)
    wrong_key = Keys(KEYS.user_key, b"x" * 16, KEYS.iv, KEYS.auth_key)
    with pytest.raises(EnvelopeError) as ei:
        unpack(env.payload, env.payload_hash, wrong_key, EncryptAlgorithm.AES_CBC, HashAlgorithm.MD5, Compression.ZIP)
    # a wrong key fails the padding (decrypt) or, by chance, the hash: never passes
    assert ei.value.command_code in (CommandResult.DECRYPT, CommandResult.HASH)
    with pytest.raises(EnvelopeError) as ei:
        unpack(env.payload, base64.b64encode(b"0" * 32).decode(), KEYS, EncryptAlgorithm.AES_CBC, HashAlgorithm.MD5,
               Compression.ZIP)
    assert (ei.value.command_code, ei.value.file_code) == (CommandResult.HASH, FileResult.HASH)
    with pytest.raises(EnvelopeError) as ei:
        unpack("%%%", "", KEYS, EncryptAlgorithm.NONE, HashAlgorithm.MD5, Compression.NONE)
    assert (ei.value.command_code, ei.value.file_code) == (CommandResult.DECRYPT, FileResult.DECRYPT)
    bad_zip = b"PK\x03\x04garbage"
    env2 = pack(bad_zip, KEYS, EncryptAlgorithm.NONE, HashAlgorithm.MD5, Compression.NONE)
    with pytest.raises(EnvelopeError) as ei:
        unpack(env2.payload, env2.payload_hash, KEYS, EncryptAlgorithm.NONE, HashAlgorithm.MD5, Compression.ZIP)
    assert (ei.value.command_code, ei.value.file_code) == (CommandResult.UNZIP, FileResult.UNZIP)


def test_zip_bomb_stops() -> None:
    import gzip

    from beiand.isms.wire import envelope

    bomb = gzip.compress(b"\0" * (envelope.MAX_PACKED + 10))
    with pytest.raises(EnvelopeError, match="decompressed"):
        decompress(bomb, Compression.GZIP)


def test_keys_validated_and_hidden() -> None:
    with pytest.raises(ValueError, match="encKey"):
        Keys(b"u", b"short", dbl.IV, b"a")
    assert "0123456789abcdef" not in repr(KEYS)
