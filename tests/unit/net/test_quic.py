import pytest

from beiand.lab.traffic import quic_initial_datagrams
from beiand.net.errors import QuicError
from beiand.net.quic import V1, V2, InitialKeys, QuicInitialReader, hkdf_expand_label, hkdf_extract, is_initial


def test_rfc9001_appendix_a_keys():
    # https://www.rfc-editor.org/rfc/rfc9001#appendix-A.1
    dcid = bytes.fromhex("8394c8f03e515708")
    secret = hkdf_extract(bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), dcid)
    assert secret.hex() == "7db5df06e7a69e432496adedb00851923595221596ae2ae9fb8115c1e9ed0a44"
    client = hkdf_expand_label(secret, b"client in", 32)
    assert client.hex() == "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea"
    assert hkdf_expand_label(client, b"quic key", 16).hex() == "1f369613dd76d5467730efcbe3b1a22d"
    assert hkdf_expand_label(client, b"quic iv", 12).hex() == "fa044b2f42a3fd3b46fb255c"
    assert hkdf_expand_label(client, b"quic hp", 16).hex() == "9f50449e04a0e810283a1e9933adedd2"


def test_rfc9369_appendix_a_keys():
    # https://www.rfc-editor.org/rfc/rfc9369#appendix-A.1
    dcid = bytes.fromhex("8394c8f03e515708")
    secret = hkdf_extract(bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"), dcid)
    client = hkdf_expand_label(secret, b"client in", 32)
    assert client.hex() == "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b"
    assert hkdf_expand_label(client, b"quicv2 key", 16).hex() == "8b1a0bc121284290a29e0971b5cd045d"
    assert InitialKeys(dcid, V2).iv.hex() == "91f73e2351d8fa91660e909f"


@pytest.mark.parametrize("version", [V1, V2])
@pytest.mark.parametrize("big", [False, True])
def test_aioquic_initials(version, big):
    dgs = quic_initial_datagrams(f"q{version}.example.com", version, big=big)
    assert all(is_initial(d) for d in dgs)
    r = QuicInitialReader()
    results = [r.feed(d) for d in dgs]
    assert results[-1].sni == f"q{version}.example.com" and results[-1].alpn[0] == "h3"
    assert all(x is None for x in results[:-1])
    if big:
        # CRYPTO frames out of order: the datagrams in reverse
        r2 = QuicInitialReader()
        assert [r2.feed(d) for d in reversed(dgs)][-1].sni == f"q{version}.example.com"


def test_tampered_initial_fails_to_decrypt():
    d = bytearray(quic_initial_datagrams("t.example.com")[0])
    d[100] ^= 0xFF
    with pytest.raises(QuicError, match="decrypt-failed"):
        QuicInitialReader().feed(bytes(d))
    assert not is_initial(b"\x40" + bytes(20))
