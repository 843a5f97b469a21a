"""Notices to sponsors: templates, contacts, and mail through a real SMTP relay (STARTTLS, login)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beiand.policy.cases import FINDINGS, Case
from beiand.runtime.notices import FIELDS, NoticeError, Relay, Templates, load_contacts, notice_values, send_mail
from tests.smtp_relay import PASSWORD, USER
from tests.smtp_relay import Relay as SmtpRelay

CASE = Case("cust-1|unfiled|shop.example.xyz", "cust-1", "unfiled", ("shop.example.xyz",), "open", 1_700_000_000.0, 0.0,
            1_700_000_000.0, 1_700_000_500.0, 12, ("198.51.100.11",))


def values(finding: str = "unfiled") -> dict[str, str]:
    c = Case(CASE.key.replace("unfiled", finding), "cust-1", finding, CASE.names, "open", CASE.opened_at, 0.0, CASE.first_seen,
             CASE.last_seen, 12)
    return notice_values(c, 1_701_000_000.0, 10, "400-000-0000", "示例云计算有限公司")


@pytest.mark.parametrize("finding", sorted(FINDINGS))
def test_every_finding_has_a_notice_chinese_first_with_what_to_do(finding: str) -> None:
    subject, body = Templates().render("notice", finding, values(finding))
    assert "shop.example.xyz" in subject and "备案整改通知" in subject
    assert body.index("整改期限") < body.index("deadline") and "2023-11-26 20:00" in body  # Beijing time
    assert FINDINGS[finding] in body and "处理要求" in body and "400-000-0000" in body and "示例云计算有限公司" in body
    assert body.index("取消接入") < body.index("cancel access")


def test_the_reminder_names_the_deadline() -> None:
    subject, body = Templates().render("reminder", "unfiled", values())
    assert "2023-11-26" in subject and "即将届满" in body


def test_an_operators_template_wins_and_a_broken_one_is_named(tmp_path: Path) -> None:
    (tmp_path / "unfiled.txt").write_text("Subject: 请备案 $name\n\n$account: $deadline\n", encoding="utf-8")
    t = Templates(tmp_path)
    assert t.render("notice", "unfiled", values()) == ("请备案 shop.example.xyz", "cust-1: 2023-11-26 20:00\n")
    assert t.render("notice", "shell", values("shell"))[0].startswith("【备案整改通知")  # no file: built-in
    (tmp_path / "default.txt").write_text("Subject: x\n\n$nosuchfield\n")
    with pytest.raises(NoticeError, match=r"default\.txt: \$nosuchfield is not a field"):
        t.render("notice", "shell", values("shell"))
    with pytest.raises(NoticeError, match=r"default\.txt"):
        t.check()
    (tmp_path / "default.txt").write_text("Subject: x\n\ncosts 5$ now\n")
    with pytest.raises(NoticeError, match=r"write \$\$ for a dollar sign"):
        t.render("notice", "shell", values("shell"))
    (tmp_path / "default.txt").write_text("no subject line\n")
    with pytest.raises(NoticeError, match=r"first line must be 'Subject: \.\.\.'"):
        t.render("notice", "shell", values("shell"))
    (tmp_path / "default.txt").write_bytes(b"Subject: \xff\xfe\n")
    with pytest.raises(NoticeError, match=r"default\.txt"):
        t.render("notice", "shell", values("shell"))


def test_every_field_is_filled() -> None:
    assert set(values()) == set(FIELDS)


def test_contacts_in_english_or_chinese_with_named_lines(tmp_path: Path) -> None:
    p = tmp_path / "contacts.csv"
    p.write_text("account,email,name\ncust-1,ops@cust1.example,运维\ncust-1,boss@cust1.example\n# note\ncust-2,a@b.example\n")
    assert load_contacts(p) == {"cust-1": ["=?utf-8?b?6L+Q57u0?= <ops@cust1.example>", "boss@cust1.example"],
                                "cust-2": ["a@b.example"]}
    p.write_text("用户账号,邮箱\ncust-3,x@y.example\n", encoding="utf-8")
    assert load_contacts(p) == {"cust-3": ["x@y.example"]}
    p.write_text("account,email\ncust-1,not-an-address\n,a@b.example\ncust-2,a@b.example,extra,cells\n")
    with pytest.raises(NoticeError) as e:
        load_contacts(p)
    assert f"{p}:2:" in str(e.value) and f"{p}:3:" in str(e.value) and f"{p}:4:" in str(e.value)
    p.write_text("who,where\n")
    with pytest.raises(NoticeError, match="expected account,email"):
        load_contacts(p)
    with pytest.raises(NoticeError, match="cannot read"):
        load_contacts(tmp_path / "missing.csv")


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_any_contacts_file_reads_or_is_refused_by_name(tmp_path: Path, raw: bytes) -> None:
    p = tmp_path / "c.csv"
    p.write_bytes(b"account,email\n" + raw)
    try:
        got = load_contacts(p)
    except NoticeError as exc:
        assert str(p) in str(exc)
        return
    assert all(k and all("@" in a for a in v) for k, v in got.items())


def test_a_line_break_in_a_header_is_refused_not_sent() -> None:
    r = Relay("localhost", 1, True, "", "", None, 1.0, "b@p.example")
    with pytest.raises(NoticeError, match="cannot be built"):
        send_mail(r, ["ops@cust1.example"], "x\nBcc: victim@example.com", "body")


def test_mail_through_the_relay_with_starttls_and_login(tmp_path: Path) -> None:
    with SmtpRelay(tmp_path) as relay:
        r = Relay("localhost", relay.port, True, USER, PASSWORD, relay.ca_file, 5.0, "beian@provider.example")
        subject, body = Templates().render("notice", "unfiled", values())
        mid = send_mail(r, ["ops@cust1.example"], subject, body)
        msg = relay.handler.wait(1)[0]
        assert msg["Subject"] == subject and msg["Message-ID"] == mid and "整改期限" in msg.get_content()
        assert relay.handler.envelopes[0] == ("beian@provider.example", ["ops@cust1.example"])
        with pytest.raises(NoticeError, match=r"535|[Aa]uthentication"):
            send_mail(Relay("localhost", relay.port, True, USER, "wrong", relay.ca_file, 5.0, "b@p.example"), ["x@y.example"],
                      "s", "b")
        with pytest.raises(NoticeError, match=r"(?i)530|starttls|auth"):  # no password in the clear
            send_mail(Relay("localhost", relay.port, False, USER, PASSWORD, None, 5.0, "b@p.example"), ["x@y.example"], "s", "b")
        with pytest.raises(NoticeError, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):  # not the relay we trust
            send_mail(Relay("localhost", relay.port, True, USER, PASSWORD, None, 5.0, "b@p.example"), ["x@y.example"], "s", "b")
        relay.handler.refuse = True
        with pytest.raises(NoticeError, match=r"550|refused"):
            send_mail(r, ["ops@cust1.example"], subject, body)
        port = relay.port
    with pytest.raises(NoticeError, match=f"smtp localhost:{port}: ConnectionRefusedError"):
        send_mail(r, ["ops@cust1.example"], subject, body)
