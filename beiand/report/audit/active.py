"""The active audit (``--probe``): DNS, TLS certificates, homepages, APP domains.

Bounded concurrency, a per-host limit, timeouts. Sends traffic only to the resolver given and
to the names and addresses under audit.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import dns.asyncquery
import dns.message
import dns.rdatatype
from cryptography import x509

from beiand.model import Filing, FilingStatus, ServiceType
from beiand.policy import Policy
from beiand.policy.inventory import Inventory
from beiand.records.domains import registrable_domain
from beiand.records.index import RecordIndex
from beiand.records.numbers import FilingNumberError, find_filing_numbers, parse_filing_number
from beiand.report.audit.findings import Finding

_MIIT_LINK = re.compile(r"""<a\b[^>]*href\s*=\s*["']?https?://beian\.miit\.gov\.cn""", re.I)


_IN_FORCE = (FilingStatus.ACTIVE, FilingStatus.UNMAPPED)


@dataclass(frozen=True)
class ProbeSettings:
    resolver: str = "127.0.0.1:53"
    concurrency: int = 100
    per_host: int = 4
    timeout: float = 3.0
    http_port: int = 80
    https_port: int = 443
    max_redirects: int = 5  # same-site redirects followed before a homepage is judged


@dataclass
class ProbeStats:
    dns: int = 0
    tls: int = 0
    http: int = 0
    errors: int = 0
    peak_tasks: int = 0


class Prober:
    def __init__(self, index: RecordIndex, inventory: Inventory, policy: Policy, settings: ProbeSettings,
                 progress: Callable[[int], None] | None = None) -> None:
        self.index, self.inventory, self.policy, self.s = index, inventory, policy, settings
        host, _, port = settings.resolver.rpartition(":") if ":" in settings.resolver else (settings.resolver, "", "53")
        self.resolver = (host or settings.resolver, int(port or 53))
        self.sem = asyncio.Semaphore(settings.concurrency)
        self.hosts: dict[str, asyncio.Semaphore] = {}
        self.stats = ProbeStats()
        self.progress = progress or (lambda n: None)
        self.findings: list[Finding] = []
        self.resolved: dict[str, list[str]] = {}
        self._active = 0

    def _host(self, key: str) -> asyncio.Semaphore:
        s = self.hosts.get(key)
        if s is None:
            s = self.hosts[key] = asyncio.Semaphore(self.s.per_host)
        return s

    async def _bounded(self, key: str, coro_fn: Callable[[], object]) -> object:
        async with self.sem, self._host(key):
            self._active += 1
            self.stats.peak_tasks = max(self.stats.peak_tasks, self._active)
            try:
                return await asyncio.wait_for(coro_fn(), self.s.timeout)  # type: ignore[arg-type]
            except (TimeoutError, OSError, ValueError, aiohttp.ClientError, ssl.SSLError, dns.exception.DNSException):
                self.stats.errors += 1
                return None
            finally:
                self._active -= 1

    # -- DNS --------------------------------------------------------------------------------

    async def resolve(self, name: str) -> list[str]:
        async def q() -> list[str]:
            addrs: list[str] = []
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                msg = dns.message.make_query(name, rdtype)
                ans = await dns.asyncquery.udp(msg, self.resolver[0], port=self.resolver[1], timeout=self.s.timeout)
                for rrset in ans.answer:
                    if rrset.rdtype == rdtype:
                        addrs.extend(r.to_text() for r in rrset)
            return addrs

        self.stats.dns += 1
        got = await self._bounded(f"dns:{self.resolver[0]}", q)
        addrs = got if isinstance(got, list) else []
        self.resolved[name] = addrs
        return addrs

    def _is_ours(self, f: Filing) -> bool:
        """In force and filed through this provider (any of its legal entities)."""
        return f.status in _IN_FORCE and (not self.policy.provider_checked or self.policy.is_ours(f.access_provider))

    def _ours(self, name: str) -> Filing | None:
        # every filing covering the name, most specific first (coverage precedence, issue 13)
        return next((f for f in self.index.covering_all(name) if self._is_ours(f)), None)

    async def check_dns(self, name: str) -> None:
        addrs = await self.resolve(name)
        hosted = [a for a in addrs if self.inventory.lookup(a) is not None]
        filed = self._ours(name)
        if filed is not None and addrs and not hosted:
            self.findings.append(Finding("dns-moved-away", name, f"resolves to {', '.join(addrs)}", filing=filed.number))
        if hosted:
            d = self.policy.judge(name, hosted[0], time.time(), self.inventory.lookup(hosted[0]))
            if d.verdict.verdict.value in ("unfiled", "mismatch", "inactive") and filed is None:
                p = self.inventory.lookup(hosted[0])
                self.findings.append(Finding("dns-unfiled-points-here", name, f"{d.verdict.verdict.value}: {d.verdict.reason}",
                                             server=", ".join(hosted), account=p.account if p else ""))
        self.progress(1)

    # -- TLS --------------------------------------------------------------------------------

    async def cert_names(self, ip: str, sni: str | None) -> list[str]:
        async def q() -> list[str]:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            _, w = await asyncio.open_connection(ip, 443, ssl=ctx, server_hostname=sni or None)
            try:
                der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
            finally:
                w.close()
            cert = x509.load_der_x509_certificate(der)
            try:
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                return [n.lower() for n in san.get_values_for_type(x509.DNSName)]
            except x509.ExtensionNotFound:
                return []

        self.stats.tls += 1
        got = await self._bounded(ip, q)
        return got if isinstance(got, list) else []

    async def check_tls(self, ip: str, snis: Iterable[str]) -> None:
        names: set[str] = set(await self.cert_names(ip, None))
        for sni in list(snis)[:2]:
            names |= set(await self.cert_names(ip, sni))
        prefix = self.inventory.lookup(ip)
        for n in sorted(names):
            base = n[2:] if n.startswith("*.") else n
            d = self.policy.judge(base, ip, time.time(), prefix)
            if d.verdict.verdict.value in ("unfiled", "mismatch", "inactive"):
                self.findings.append(Finding("tls-san-unfiled", n, f"certificate on {ip}:443: {d.verdict.verdict.value} "
                                             f"({d.verdict.reason})", server=f"{ip}:443",
                                             account=prefix.account if prefix else ""))
        self.progress(1)

    # -- homepages ---------------------------------------------------------------------------

    async def fetch(self, session: aiohttp.ClientSession, name: str, ip: str) -> str | None:
        """The homepage of ``name`` served at ``ip``, after same-site redirects (a homepage that
        redirects to ``/index.html`` or to ``www.`` shows its 备案号 there, Order 292 art. 12)."""
        host_ip = f"[{ip}]" if ":" in ip else ip

        async def q() -> str | None:
            for first in ("https", "http"):
                scheme, host, path = first, name, "/"
                try:
                    for hop in range(self.s.max_redirects + 1):
                        port = self.s.https_port if scheme == "https" else self.s.http_port
                        kw: dict[str, Any] = {"server_hostname": host, "ssl": False} if scheme == "https" else {}
                        async with session.get(f"{scheme}://{host_ip}:{port}{path}", headers={"Host": host},
                                               allow_redirects=False, **kw) as r:
                            if r.status in (301, 302, 303, 307, 308) and hop < self.s.max_redirects:
                                nxt = same_site_redirect(scheme, host, path, r.headers.get("Location", ""))
                                if nxt is not None:
                                    scheme, host, path = nxt
                                    continue
                            return await r.text(errors="replace")
                except (aiohttp.ClientError, OSError, ValueError):
                    continue
            return None

        self.stats.http += 1
        got = await self._bounded(ip, q)
        return got if isinstance(got, str) else None

    async def check_homepage(self, session: aiohttp.ClientSession, name: str, ip: str, filing: Filing) -> None:
        page = await self.fetch(session, name, ip)
        self.progress(1)
        if page is None:
            return
        own = parse_filing_number(filing.number).sponsor
        shown = find_filing_numbers(page)
        if not shown:
            self.findings.append(Finding("homepage-no-number", name, "no 备案号 on the homepage", filing=filing.number,
                                         server=f"{ip}"))
        elif not any(n.sponsor == own for n in shown):
            self.findings.append(Finding("homepage-wrong-number", name, f"shows {', '.join(n.text for n in shown)}; "
                                         f"its filing is {filing.number}", filing=filing.number, server=ip))
        elif not _MIIT_LINK.search(page):
            self.findings.append(Finding("homepage-not-linked", name, "备案号 shown but not linked to https://beian.miit.gov.cn",
                                         filing=filing.number, server=ip))

    async def check_app(self, filing: Filing) -> None:
        for d in filing.domains:
            addrs = self.resolved.get(d) or await self.resolve(d)
            ok = False
            for a in addrs[:2]:
                async def conn(a: str = a) -> bool:
                    for port in (443, 80):
                        try:
                            _, w = await asyncio.open_connection(a, port)
                            w.close()
                            return True
                        except OSError:
                            continue
                    return False

                ok = bool(await self._bounded(a, conn)) or ok
            if not ok:
                self.findings.append(Finding("app-domain-unreachable", d, f"{filing.number}: "
                                             + ("does not resolve" if not addrs else f"no answer on {', '.join(addrs)}"),
                                             filing=filing.number))
        self.progress(1)

    # -- the whole probe ---------------------------------------------------------------------

    async def _pool(self, jobs: list[Callable[[], Coroutine[Any, Any, None]]]) -> None:
        """Run jobs with at most ``concurrency`` alive at once (not one task per job up front:
        10,000 pending TLS connections would hold their buffers all at once)."""
        it = iter(jobs)

        async def worker() -> None:
            for job in it:
                await job()

        await asyncio.gather(*(worker() for _ in range(min(self.s.concurrency, len(jobs)) or 1)))

    async def run(self, names: Iterable[str], ips: Iterable[str]) -> list[Finding]:
        names = sorted(set(names))
        await self._pool([partial(self.check_dns, n) for n in names])
        hosted_ips = set(ips)
        by_ip: dict[str, set[str]] = {}
        for n, addrs in self.resolved.items():
            for a in addrs:
                if self.inventory.lookup(a) is not None:
                    hosted_ips.add(a)
                    by_ip.setdefault(a, set()).add(n)
        await self._pool([partial(self.check_tls, ip, sorted(by_ip.get(ip, ()))) for ip in sorted(hosted_ips)])
        timeout = aiohttp.ClientTimeout(total=self.s.timeout)
        conn = aiohttp.TCPConnector(limit=self.s.concurrency, ssl=False, force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
            jobs: list[Callable[[], Coroutine[Any, Any, None]]] = []
            for n in names:
                f = self._ours(n)
                hosted = [a for a in self.resolved.get(n, []) if self.inventory.lookup(a) is not None]
                if f is not None and f.service_type is ServiceType.WEBSITE and hosted:
                    jobs.append(partial(self.check_homepage, session, n, hosted[0], f))
            await self._pool(jobs)
        apps = [f for f in self.index.filings if f.service_type is not ServiceType.WEBSITE and self._is_ours(f) and f.domains]
        await self._pool([partial(self.check_app, f) for f in apps])
        return self.findings


def same_site_redirect(scheme: str, host: str, path: str, location: str) -> tuple[str, str, str] | None:
    """(scheme, host, path) a redirect leads to when it stays on the site (same registrable
    domain, http or https on the default port); ``None`` otherwise."""
    if not location:
        return None
    target = urllib.parse.urlsplit(urllib.parse.urljoin(f"{scheme}://{host}{path}", location.strip()))
    if target.scheme not in ("http", "https") or not target.hostname:
        return None
    try:
        port = target.port
    except ValueError:
        return None
    if port not in (None, 80 if target.scheme == "http" else 443):
        return None
    new_host = target.hostname.rstrip(".").lower()
    if new_host != host and registrable_domain(new_host) != registrable_domain(host):
        return None
    return target.scheme, new_host, (target.path or "/") + (f"?{target.query}" if target.query else "")


def sponsor_of(number: str) -> str:
    try:
        return parse_filing_number(number).sponsor
    except FilingNumberError:
        return number
