"""Realistic synthetic filing exports, shared by the tests, the benchmarks and the demo.

Province mix weighted like real filings, websites and APP / mini-program / quick-app filings,
several domains per row (some IDN, some ``*.``), IPs inside the hosted prefixes, statuses
and 接入商 of this and other providers, and (on request) bad rows of every kind.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import random
from collections.abc import Iterator
from dataclasses import dataclass

PROVINCE_WEIGHTS = {
    "粤": 18, "京": 14, "沪": 9, "浙": 9, "苏": 8, "鲁": 5, "闽": 4, "蜀": 4, "鄂": 3, "豫": 3, "湘": 2, "皖": 2,
    "津": 2, "渝": 2, "冀": 2, "辽": 1, "陕": 1, "赣": 1, "桂": 1, "黔": 1, "滇": 1, "晋": 1, "吉": 1, "黑": 1,
    "蒙": 1, "琼": 1, "陇": 1, "宁": 1, "青": 1, "新": 1, "藏": 1,
}
TLDS = ["com", "cn", "com.cn", "net", "net.cn", "org.cn", "top", "xyz", "中国", "公司", "网络", "gov.cn"]
TLD_WEIGHTS = [30, 25, 12, 8, 4, 3, 6, 3, 2, 2, 2, 1]
SYLLABLES = ["bei", "jing", "shang", "hai", "yun", "tian", "hua", "xin", "long", "feng", "ming", "da", "zhi", "tech",
             "data", "shop", "mall", "net", "cloud", "app", "game", "news", "edu", "fin", "med", "auto", "home"]
IDN_WORDS = ["例子", "测试", "商城", "云端", "新闻", "科技", "数据", "在线", "北京", "上海", "游戏", "教育"]
OUR_PROVIDER = "示例云计算有限公司"
OTHER_PROVIDERS = ["某某数据有限公司", "另一个IDC有限公司", "远方网络科技有限公司"]
HEADER = ["备案号", "主办单位", "服务类型", "网站名称", "域名", "IP", "接入商", "状态", "审核时间"]


@dataclass(frozen=True)
class GenConfig:
    filings: int = 1000
    seed: int = 1
    bad_rows: int = 0
    hosted_v4: str = "198.51.100.0/24"
    hosted_v6: str = "2001:db8:100::/48"
    provider: str = OUR_PROVIDER
    domains_per_filing: float = 2.0
    ip_share: float = 0.3  # share of filings listing IPs
    range_share: float = 0.0  # of the IP cells: share written as a range (a-b) or a CIDR prefix, as real exports do
    idn_share: float = 0.03
    other_provider_share: float = 0.05
    inactive_share: float = 0.03


class Generator:
    def __init__(self, cfg: GenConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self._provinces = list(PROVINCE_WEIGHTS)
        self._pweights = list(PROVINCE_WEIGHTS.values())
        self._v4 = ipaddress.ip_network(cfg.hosted_v4)
        self._v6 = ipaddress.ip_network(cfg.hosted_v6)

    def _label(self, i: int) -> str:
        r = self.rng
        return r.choice(SYLLABLES) + r.choice(SYLLABLES) + format(i, "x")

    def ip_range(self) -> str:
        """A range (``a-b``, up to 64 addresses) or a CIDR prefix (/24../30) inside the hosted IPv4 space."""
        r = self.rng
        base = int(self._v4.network_address) + r.randrange(max(1, self._v4.num_addresses - 256))
        if r.random() < 0.5:
            return f"{ipaddress.ip_address(base)}-{ipaddress.ip_address(base + r.randrange(1, 64))}"
        plen = r.randrange(max(24, self._v4.prefixlen), 31)
        return str(ipaddress.ip_network(f"{ipaddress.ip_address(base)}/{plen}", strict=False))

    def domain(self, i: int) -> str:
        r = self.rng
        if r.random() < self.cfg.idn_share:
            return r.choice(IDN_WORDS) + format(i, "x") + "." + r.choice(["中国", "公司", "网络", "cn", "com"])
        return self._label(i) + "." + r.choices(TLDS[:8], TLD_WEIGHTS[:8])[0]

    def ip(self) -> str:
        r = self.rng
        if r.random() < 0.8:
            return str(self._v4.network_address + r.randrange(1, min(self._v4.num_addresses - 1, 1 << 24)))
        return str(self._v6.network_address + r.randrange(1, 1 << 32))

    def rows(self) -> Iterator[list[str]]:
        r, cfg = self.rng, self.cfg
        bad_every = cfg.filings // cfg.bad_rows if cfg.bad_rows else 0
        sponsor_serial: list[tuple[str, int]] = []
        for i in range(cfg.filings):
            if bad_every and i % bad_every == bad_every - 1:
                yield self.bad_row(i)
                continue
            prov = r.choices(self._provinces, self._pweights)[0]
            if sponsor_serial and r.random() < 0.3:  # another service of an existing sponsor
                k = r.randrange(len(sponsor_serial))
                sponsor_num, serial = sponsor_serial[k]
                serial += 1
                sponsor_serial[k] = (sponsor_num, serial)
            else:
                digits = f"{r.randrange(10**7, 10**8)}" if r.random() < 0.7 else f"20{r.randrange(15, 26)}{r.randrange(10**5, 10**6):06d}"
                kind = r.random()
                if kind < 0.03:
                    sponsor_num = f"{prov}ICP证{r.randrange(10**5, 10**6):06d}号"
                elif kind < 0.05:
                    sponsor_num = f"{prov}B2-20{r.randrange(10, 26)}{r.randrange(10**3, 10**4):04d}"
                else:
                    sponsor_num = f"{prov}ICP备{digits}号"
                serial = 1
                sponsor_serial.append((sponsor_num, serial))
                if len(sponsor_serial) > 5000:
                    sponsor_serial.pop(0)
            t = r.random()
            if t < 0.8:
                letter, type_text = "", "网站"
            elif t < 0.92:
                letter, type_text = "A", "APP"
            elif t < 0.98:
                letter, type_text = "X", "小程序"
            else:
                letter, type_text = "K", "快应用"
            number = f"{sponsor_num}-{serial}{letter}"
            n_dom = max(1, int(r.expovariate(1 / cfg.domains_per_filing) + 0.5))
            domains = [self.domain(i * 8 + k) for k in range(min(n_dom, 8))]
            if r.random() < 0.05:
                domains[0] = "*." + domains[0]
            ips = [self.ip() for _ in range(r.randint(1, 3))] if r.random() < cfg.ip_share else []
            if ips and r.random() < cfg.range_share:
                ips[0] = self.ip_range()
            provider = cfg.provider if r.random() >= cfg.other_provider_share else r.choice(OTHER_PROVIDERS)
            s = r.random()
            status = "正常"
            if s < cfg.inactive_share:
                status = r.choice(["已注销", "已吊销"])
            elif s < cfg.inactive_share + 0.01:
                status = "接入审核中"
            sep = r.choice([";", ",", "、", " ", "\n"])
            yield [
                number, f"主办单位{i}有限公司", type_text, f"服务{i}", sep.join(domains), ";".join(ips), provider, status,
                f"20{r.randrange(18, 26)}-{r.randrange(1, 13):02d}-{r.randrange(1, 29):02d}",
            ]

    def bad_row(self, i: int) -> list[str]:
        r = self.rng
        kind = r.randrange(7)
        row = [f"京ICP备{r.randrange(10**7, 10**8)}号-1", f"坏行{i}", "网站", "x", f"bad{i}.com", "", self.cfg.provider, "正常",
               "2024-01-01"]
        if kind == 0:
            row[0] = f"粤公网安备{r.randrange(10**13, 10**14)}号"
        elif kind == 1:
            row[0] = f"京ICP备{r.randrange(10**6, 10**7)}号-1"
        elif kind == 2:
            row[0] = f"X ICP备{r.randrange(10**7, 10**8)}号-1B"
        elif kind == 3:
            row[4] = "com.cn"
        elif kind == 4:
            row[4] = f"bad_{i}..example.com"
        elif kind == 5:
            row[5] = "999.1.2.3"
        else:
            row[8] = "2024-02-30"  # a date that does not exist (an unknown status is not an error: kept in force)
        return row


def write_csv(path: str, cfg: GenConfig, encoding: str = "utf-8") -> None:
    with open(path, "w", encoding=encoding, newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for row in Generator(cfg).rows():
            w.writerow(row)


def csv_text(cfg: GenConfig) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(HEADER)
    for row in Generator(cfg).rows():
        w.writerow(row)
    return buf.getvalue()


def write_inventory(path: str, cfg: GenConfig) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("prefix,account,site,state,mode\n")
        f.write(f"{cfg.hosted_v4},cust-0001,bj-yz-1,active,\n")
        f.write(f"{cfg.hosted_v6},cust-0002,sh-jq-2,active,\n")
