"""Notices to a sponsor's contact (issue 31; docs/cases.md): templates, contacts and the SMTP relay.

A notice names the site, what was found, the rule and its article, the 整改 deadline and what to
do, Chinese first with English. Templates are ``string.Template`` text (``$name``, ``$deadline``…),
built in per finding kind, or the operator's own in ``cases.templates_dir`` (``<finding>.txt``,
``reminder.txt``, ``default.txt``; the first line ``Subject: …``). A template that names a field
there is none of fails with the file and the field, before anything is sent.

Mail goes through the operator's relay (``cases.smtp_host``) with STARTTLS before the login (the
password comes from a file only beiand may read); a failure raises :class:`NoticeError` with what
the relay said, and the caller counts it, keeps the case open and tries again later.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import smtplib
import ssl
import string
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from beiand.errors import BeiandError, FileProblems
from beiand.policy.cases import FINDINGS, Case
from beiand.policy.workdays import BEIJING

# The rule each finding breaks, with its article (REGULATIONS.md), Chinese first
RULES = {
    "unfiled": "先备案后接入：《互联网信息服务管理办法》（国务院令第292号）第四条；《非经营性互联网信息服务备案管理办法》"
               "（信息产业部令第33号）第五条、第十八条 / file before access: Order 292 art. 4; Order 33 art. 5, 18",
    "mismatch": "接入信息须准确：第33号令第十九条；工信部信管函〔2017〕501号 第七条（三）、第十一条 / the filing must name this "
                "provider and these addresses: Order 33 art. 19; 501号 art. 7(3), 11",
    "inactive": "备案已注销或未生效的网站不得接入：501号 第十五条（五）；第33号令第十八条 / a cancelled or pending filing gives "
                "no access: 501号 art. 15(5); Order 33 art. 18",
    "shell": "动态核实（空壳网站）：501号 第七条（三） / dynamic verification (a filing whose site does not run here): "
             "501号 art. 7(3)",
    "resolves-away": "接入信息须准确（解析境外或他处）：第33号令第十九条；501号 第七条（三） / the filed domain must resolve "
                     "to this provider's service: Order 33 art. 19; 501号 art. 7(3)",
    "no-number": "网站首页底部中央须悬挂备案编号并链接至 beian.miit.gov.cn：第33号令第十三条；国务院令第292号第十二条 / the "
                 "homepage must show its 备案号 linked to beian.miit.gov.cn: Order 33 art. 13; Order 292 art. 12",
    "authority": "上级下发的未备案网站须停止接入：501号 第七条（四）、第十六条（四） / a site the authority lists as unfiled "
                 "must stop: 501号 art. 7(4), 16(4)",
}
WHAT_TO_DO = {
    "unfiled": "请通过本接入商的备案系统提交备案，或停止该网站服务。/ File the site through this provider's 备案 system, or "
               "stop the service.",
    "mismatch": "请通过本接入商的备案系统变更备案的接入信息（接入商、IP 地址），或停止该网站服务。/ Correct the filing's access "
                "(provider, addresses) through this provider's 备案 system, or stop the service.",
    "inactive": "备案已注销或尚未通过：请重新备案，或停止该网站服务。/ The filing is cancelled or not yet approved: file again, "
                "or stop the service.",
    "shell": "请确认网站仍在本接入商运行；否则申请取消接入。/ Confirm the site still runs here; otherwise request 取消接入.",
    "resolves-away": "请使域名解析至本接入商的服务，或变更备案的接入信息。/ Point the domain at this provider's service, or "
                     "correct the filing's access.",
    "no-number": "请在网站首页底部中央悬挂备案编号并链接至 https://beian.miit.gov.cn 。/ Show the 备案号 at the bottom centre "
                 "of the homepage, linked to https://beian.miit.gov.cn.",
    "authority": "请立即停止该网站服务并完成备案。/ Stop the service now and file the site.",
}

NOTICE = """Subject: 【备案整改通知 / Filing notice】$name ($case_no)

尊敬的客户（账号 $account）：

经本接入商核查，您的网站存在以下问题：
  网站 / site:       $names
  问题 / finding:    $finding
  依据 / rule:       $rule
  发现时间 / found:   $found (最近 / last seen $last_seen，$hits 次访问 / records)
  整改期限 / deadline: $deadline（北京时间 / Beijing time，$days 个工作日 / working days）

处理要求 / what to do:
  $todo

逾期未整改的，本接入商将依据上述规定对该网站取消接入（停止访问，不影响您的其他网站）。
If this is not resolved by the deadline, this provider will cancel access to this site (取消接入;
your other sites are not affected).

如有疑问或需申请延期、申诉，请联系 / questions, an extension or an appeal: $contact

$provider
"""

REMINDER = """Subject: 【备案整改提醒 / Reminder】$name ($case_no): 整改期限 $deadline

尊敬的客户（账号 $account）：

您的网站 $names 的备案整改期限即将届满 / the deadline for this site is near:
  问题 / finding:    $finding
  依据 / rule:       $rule
  整改期限 / deadline: $deadline（北京时间 / Beijing time）

处理要求 / what to do:
  $todo

期满仍未整改的，该网站将被取消接入。/ After the deadline, access to this site is cancelled.

联系 / contact: $contact

$provider
"""

FIELDS = ("name", "names", "account", "case_no", "finding", "rule", "found", "last_seen", "hits", "deadline", "days", "todo",
          "contact", "provider")


class NoticeError(BeiandError):
    pass


def _fmt(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, BEIJING).strftime("%Y-%m-%d %H:%M") if ts else "-"


class Templates:
    """The notice templates: the operator's directory first (``<finding>.txt``, ``reminder.txt``,
    ``default.txt``), else the built-in ones."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory

    def source(self, kind: str, finding: str) -> tuple[str, str]:
        """(where the template comes from, its text) for a notice (``kind`` "notice") or a reminder."""
        if self.directory is not None:
            for stem in ((finding, "default") if kind == "notice" else ("reminder",)):
                p = self.directory / f"{stem}.txt"
                try:
                    return str(p), p.read_text(encoding="utf-8")
                except FileNotFoundError:
                    continue
                except (OSError, UnicodeDecodeError) as exc:
                    raise NoticeError(f"{p}: {exc}") from None
        return ("built-in reminder" if kind == "reminder" else "built-in notice"), (REMINDER if kind == "reminder" else NOTICE)

    def render(self, kind: str, finding: str, values: dict[str, str]) -> tuple[str, str]:
        """(subject, body); NoticeError names the template and the field it cannot fill."""
        where, text = self.source(kind, finding)
        try:
            out = string.Template(text).substitute(values)
        except KeyError as exc:
            raise NoticeError(f"{where}: ${exc.args[0]} is not a field of a notice ({', '.join(FIELDS)})") from None
        except ValueError as exc:
            raise NoticeError(f"{where}: {exc} (write $$ for a dollar sign)") from None
        head, sep, body = out.partition("\n")
        if not head.startswith("Subject:") or not sep:
            raise NoticeError(f"{where}: the first line must be 'Subject: ...'")
        return head[len("Subject:"):].strip(), body.lstrip("\n")

    def check(self) -> None:
        """Render every template with sample values: a field that does not exist, a stray ``$``."""
        sample = dict.fromkeys(FIELDS, "x")
        for finding in FINDINGS:
            self.render("notice", finding, sample)
        self.render("reminder", "unfiled", sample)


def notice_values(c: Case, deadline: float, days: int, contact: str, provider: str) -> dict[str, str]:
    return {"name": c.names[0], "names": ", ".join(c.names), "account": c.account, "case_no": c.key,
            "finding": FINDINGS[c.finding], "rule": RULES[c.finding], "found": _fmt(c.first_seen or c.opened_at),
            "last_seen": _fmt(c.last_seen), "hits": str(c.hits), "deadline": _fmt(deadline), "days": str(days),
            "todo": WHAT_TO_DO[c.finding], "contact": contact or "-", "provider": provider or "-"}


_CONTACT_HEADERS = {"account": "account", "用户账号": "account", "账号": "account", "email": "email", "邮箱": "email",
                    "mail": "email", "name": "name", "联系人": "name"}


class ContactsError(FileProblems):
    pass


def load_contacts(path: Path) -> dict[str, list[str]]:
    """CSV ``account,email[,name]`` (or 用户账号,邮箱,联系人; several rows: several recipients);
    NoticeError names every line without an account or a mail address."""
    from beiand.policy.inventory import csv_rows

    problems: list[str] = []
    out: dict[str, list[str]] = {}
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise NoticeError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        for where, cells in csv_rows(path, raw, _CONTACT_HEADERS, ("account", "email"), "account,email[,name]",
                                     "用户账号,邮箱,联系人", ContactsError, problems):
            account, addr = cells.get("account", "").strip(), cells.get("email", "").strip()
            if not account or "@" not in addr or not addr.isascii() or not email.utils.parseaddr(addr)[1]:
                problems.append(f"{where}: expected an account and an (ASCII) mail address, got {account!r}, {addr!r}")
                continue
            try:
                out.setdefault(account, []).append(email.utils.formataddr((cells.get("name", "").strip(), addr)))
            except (UnicodeError, ValueError) as exc:
                problems.append(f"{where}: {addr!r}: {exc}")
    except ContactsError as exc:
        problems = exc.problems + problems
    if problems:
        raise NoticeError("; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    return out


@dataclass(frozen=True)
class Relay:
    host: str
    port: int = 587
    starttls: bool = True
    user: str = ""
    password: str = field(default="", repr=False)
    ca_file: Path | None = None
    timeout: float = 10.0
    sender: str = ""


def send_mail(relay: Relay, to: list[str], subject: str, body: str) -> str:
    """Send one mail; the relay's message id. NoticeError says what failed (connect, STARTTLS,
    login, a refused recipient)."""
    msg = EmailMessage()
    try:
        msg["From"] = relay.sender
        msg["To"] = ", ".join(to)
        msg["Subject"] = subject
        msg["Date"] = email.utils.formatdate(localtime=True)
        msg["Message-ID"] = email.utils.make_msgid(domain=relay.sender.rpartition("@")[2] or None)
        msg.set_content(body)
    except (ValueError, TypeError) as exc:  # a header with a line break (a template, an account name)
        raise NoticeError(f"the mail cannot be built: {exc}") from None
    try:
        with smtplib.SMTP(relay.host, relay.port, timeout=relay.timeout) as s:
            s.ehlo()
            if relay.starttls:
                if not s.has_extn("starttls"):
                    raise NoticeError(f"smtp {relay.host}:{relay.port}: the relay offers no STARTTLS (cases.smtp_starttls)")
                ctx = ssl.create_default_context(cafile=str(relay.ca_file) if relay.ca_file else None)
                s.starttls(context=ctx)
                s.ehlo()
            if relay.user:
                s.login(relay.user, relay.password)
            refused = s.send_message(msg)
            if refused:
                raise NoticeError(f"smtp {relay.host}:{relay.port}: refused {', '.join(refused)}")
    except NoticeError:
        raise
    except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
        raise NoticeError(f"smtp {relay.host}:{relay.port}: {type(exc).__name__}: {exc}") from None
    return str(msg["Message-ID"])
