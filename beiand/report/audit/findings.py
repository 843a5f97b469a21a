"""What an audit finds: each kind names the rule it breaks (REGULATIONS.md) and what to do."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2}

# kind → (severity, obligation and article, what to do)
KINDS: dict[str, tuple[str, str, str]] = {
    "unfiled-served": ("high", "O1 先备案后接入 (Order 292 art. 4; Order 33 art. 5, 18)",
                       "Stop access or set the prefix to enforce; the sponsor must file with this provider (beian.miit.gov.cn)."),
    "unfiled-blocked": ("medium", "O1/O3 (Order 292 art. 4; 501号 art. 7(4))",
                        "Blocked already; urge the customer to file the name, or remove it from the server."),
    "mismatch-served": ("medium", "O4 (Order 33 art. 19 ¶1; 501号 art. 7(3), 11)",
                        "The filing names another access provider (接入商) or does not cover this use: the sponsor must "
                        "change the filing's access to this provider."),
    "name-on-unlisted-ip": ("medium", "O4 dynamic verification (Order 33 art. 19 ¶1; 501号 art. 7(3), 11)",
                            "The filing does not list this IP: the sponsor must update the filing's IP addresses."),
    "cancelled-served": ("high", "O6 cancelled filings (501号 art. 15(5); Order 33 art. 18)",
                         "The filing is cancelled or revoked: stop access to the site."),
    "pending-prefix-traffic": ("medium", "O5 access after verification (501号 art. 11)",
                               "A prefix still pending verification serves traffic: finish the check or stop access."),
    "filed-never-seen": ("low", "O4 dynamic verification (501号 art. 7(3))",
                         "A filing of this provider whose names were not seen in the window: check the service still runs "
                         "here, or cancel the access (取消接入)."),
    "filing-ip-not-hosted": ("medium", "O4 (Order 33 art. 19)",
                             "The filing lists an IP outside this provider's hosted inventory: correct the filing."),
    "filing-ip-other-account": ("medium", "O4 (Order 33 art. 19)",
                                "The filing lists IPs held by different customer accounts: check who runs the site."),
    "dns-moved-away": ("medium", "O4 (501号 art. 7(3))",
                       "A filed name no longer resolves into this provider's space: the filing should move with the service."),
    "dns-unfiled-points-here": ("high", "O1/O3 (Order 292 art. 4; 501号 art. 7(4))",
                                "An unfiled name resolves into hosted space: find the customer, stop access, urge filing."),
    "tls-san-unfiled": ("medium", "O3 search for unfiled sites (501号 art. 7(4))",
                        "A hosted server's certificate names a site not filed here: it is ready to serve it; urge filing."),
    "homepage-no-number": ("medium", "O8 filing number on the homepage (Order 292 art. 12; Order 33 art. 13)",
                           "The homepage must show the filing number (备案号) at the bottom centre."),
    "homepage-wrong-number": ("high", "O8 (Order 292 art. 12; Order 33 art. 13)",
                              "The homepage shows another sponsor's filing number: it must show this site's own."),
    "homepage-not-linked": ("low", "O8 (Order 33 art. 13)",
                            "The filing number must link to https://beian.miit.gov.cn."),
    "app-domain-unreachable": ("low", "O2 APP filings (105号 二(三)(九))",
                               "An APP filing's listed domain does not answer: check the filing's network resources."),
    "authority-listed-hosted": ("high", "O3/O6 (501号 art. 7(4), 16(4))",
                                "The authority listed this site as unfiled and it is hosted here: stop access and report back."),
}


@dataclass
class Finding:
    kind: str
    subject: str  # the name, IP or filing number it is about
    detail: str = ""
    account: str = ""
    server: str = ""
    filing: str = ""
    first_seen: float = 0.0
    last_seen: float = 0.0
    hits: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        return KINDS[self.kind][0]

    @property
    def rule(self) -> str:
        return KINDS[self.kind][1]

    @property
    def action(self) -> str:
        return KINDS[self.kind][2]

    def sort_key(self) -> tuple[int, str, str]:
        return (SEVERITY_ORDER[self.severity], self.kind, self.subject)

    def as_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "kind": self.kind, "subject": self.subject, "detail": self.detail,
                "account": self.account, "server": self.server, "filing": self.filing, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "hits": self.hits, "rule": self.rule, "what_to_do": self.action, **self.extra}
