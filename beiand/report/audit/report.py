"""Audit reports: a dict (→ JSON), CSV rows, and one self-contained HTML file (summary, charts
as inline SVG, tables) readable by someone who never used the CLI."""

from __future__ import annotations

import csv
import html
import io
import json
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from beiand.report.audit.findings import KINDS, SEVERITY_ORDER, Finding
from beiand.report.resource import ActiveResource as Resource


def build(findings: Sequence[Finding], resources: Sequence[Resource], meta: dict[str, Any],
          authority: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    fs = sorted(findings, key=lambda f: f.sort_key())
    by_sev = Counter(f.severity for f in fs)
    return {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"), **meta,
        "summary": {"findings": len(fs), "high": by_sev["high"], "medium": by_sev["medium"], "low": by_sev["low"],
                    "resources": len(resources), "unfiled_resources": sum(1 for r in resources if r.verdict == "unfiled"),
                    "by_kind": dict(Counter(f.kind for f in fs)), "by_account": dict(Counter(f.account or "-" for f in fs))},
        "findings": [f.as_dict() for f in fs],
        "resources": [r.as_dict() for r in resources],
        "authority": list(authority),
    }


def to_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    cols = ["severity", "kind", "subject", "detail", "account", "server", "filing", "first_seen", "last_seen", "hits", "rule",
            "what_to_do"]
    w = csv.writer(out)
    w.writerow(cols)
    for f in report["findings"]:
        w.writerow([f.get(c, "") for c in cols])
    return out.getvalue()


def _t(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).astimezone().strftime("%Y-%m-%d %H:%M") if ts else "-"


def _bars(title: str, data: dict[str, int], color: str = "#c0392b") -> str:
    items = sorted(data.items(), key=lambda kv: -kv[1])[:15]
    if not items:
        return f"<figure><figcaption>{html.escape(title)}</figcaption><p class=muted>none</p></figure>"
    top = max(v for _, v in items) or 1
    h = 22 * len(items) + 10
    rows = []
    for i, (k, v) in enumerate(items):
        w = int(300 * v / top)
        y = 5 + 22 * i
        rows.append(f'<text x="0" y="{y + 14}" font-size="12">{html.escape(str(k))[:40]}</text>'
                    f'<rect x="260" y="{y}" width="{max(w, 1)}" height="16" fill="{color}"/>'
                    f'<text x="{266 + w}" y="{y + 13}" font-size="12">{v}</text>')
    return (f'<figure><figcaption>{html.escape(title)}</figcaption>'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="640" height="{h}" role="img">{"".join(rows)}</svg></figure>')


def to_html(report: dict[str, Any]) -> str:
    s = report["summary"]
    days = Counter(datetime.fromtimestamp(f["first_seen"], UTC).strftime("%Y-%m-%d") for f in report["findings"] if f["first_seen"])
    sev_color = {"high": "#c0392b", "medium": "#e67e22", "low": "#7f8c8d"}
    frows = "".join(
        f'<tr class="{f["severity"]}"><td><span class="sev" style="background:{sev_color[f["severity"]]}">{f["severity"]}</span></td>'
        f"<td>{html.escape(f['kind'])}</td><td>{html.escape(f['subject'])}</td><td>{html.escape(f['detail'])}</td>"
        f"<td>{html.escape(f['account'] or '-')}</td><td>{html.escape(f['server'] or '-')}</td><td>{f['hits'] or ''}</td>"
        f"<td>{_t(f['last_seen'])}</td><td>{html.escape(f['rule'])}</td><td>{html.escape(f['what_to_do'])}</td></tr>"
        for f in report["findings"])
    rrows = "".join(
        f"<tr><td>{html.escape(r['name'])}</td><td>{html.escape(r['registrable_domain'])}</td>"
        f"<td>{html.escape(', '.join(r['servers'][:4]))}</td><td>{html.escape(r['account'])}</td><td>{html.escape(r['verdict'])}</td>"
        f"<td>{_t(r['first_seen'])}</td><td>{_t(r['last_seen'])}</td><td>{r['hits']}</td><td>{'yes' if r['blocked'] else 'no'}</td></tr>"
        for r in report["resources"][:2000])
    arows = "".join(
        f"<tr><td>{html.escape(a['entry'])}</td><td>{'yes' if a['hosted'] else 'no'}</td><td>{html.escape(a.get('verdict') or '-')}</td>"
        f"<td>{html.escape(a.get('account') or '-')}</td><td>{html.escape(a.get('done') or '-')}</td></tr>" for a in report["authority"])
    legend = "".join(f"<li><b>{html.escape(k)}</b> ({v[0]}): {html.escape(v[1])}</li>" for k, v in KINDS.items()
                     if k in s["by_kind"])
    data = json.dumps({"summary": s}, ensure_ascii=False).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>beiand audit report 备案审计报告 — {html.escape(report.get('gateway', ''))}</title>
<style>
body{{font-family:system-ui,"Noto Sans CJK SC",sans-serif;margin:2em;color:#222}} h1{{margin-bottom:0}}
.muted{{color:#777}} .cards{{display:flex;gap:1em;flex-wrap:wrap;margin:1.5em 0}}
.card{{border:1px solid #ddd;border-radius:8px;padding:1em 1.5em;min-width:8em}} .card b{{font-size:2em;display:block}}
table{{border-collapse:collapse;width:100%;font-size:13px;margin-bottom:2em}} th,td{{border-bottom:1px solid #eee;padding:4px 6px;
text-align:left;vertical-align:top}} th{{background:#f6f6f6}} .sev{{color:#fff;border-radius:4px;padding:1px 6px}}
figure{{display:inline-block;margin:0 2em 1em 0}} figcaption{{font-weight:bold;margin-bottom:.3em}}
</style></head><body>
<h1>备案审计报告 · beiand audit report</h1>
<p class="muted">gateway {html.escape(report.get('gateway', ''))} · window {html.escape(report.get('window', ''))} ·
generated {html.escape(report['generated'])} · source {html.escape(report.get('source', ''))}</p>
<section class="cards" id="summary">
 <div class="card">findings 发现<b id="n-findings">…</b></div>
 <div class="card">high 高<b id="n-high">…</b></div>
 <div class="card">medium 中<b id="n-medium">…</b></div>
 <div class="card">low 低<b id="n-low">…</b></div>
 <div class="card">services seen 活跃资源<b id="n-resources">…</b></div>
 <div class="card">unfiled 未备案<b id="n-unfiled">…</b></div>
</section>
<section>{_bars("Findings by kind 按类型", s["by_kind"])}{_bars("Findings by account 按客户", s["by_account"], "#2c3e50")}
{_bars("Findings by first day seen 按日期", dict(sorted(days.items())), "#2980b9")}</section>
<h2>Findings 发现 (by severity)</h2>
<table><thead><tr><th>severity</th><th>kind</th><th>subject</th><th>detail</th><th>account 客户</th><th>server</th><th>hits</th>
<th>last seen</th><th>rule 依据</th><th>what to do 处置</th></tr></thead><tbody>{frows}</tbody></table>
<h2>What the kinds mean</h2><ul>{legend}</ul>
<h2>Services seen in hosted space 活跃资源 ({len(report['resources'])})</h2>
<table><thead><tr><th>name</th><th>registrable domain</th><th>servers</th><th>account</th><th>verdict</th><th>first seen</th>
<th>last seen</th><th>hits</th><th>blocked</th></tr></thead><tbody>{rrows}</tbody></table>
{_authority_table(arows) if report["authority"] else ""}
<script type="application/json" id="report-data">{data}</script>
<script>
const s = JSON.parse(document.getElementById("report-data").textContent).summary;
for (const [id, v] of [["n-findings", s.findings], ["n-high", s.high], ["n-medium", s.medium], ["n-low", s.low],
                        ["n-resources", s.resources], ["n-unfiled", s.unfiled_resources]]) document.getElementById(id).textContent = v;
</script>
</body></html>
"""


def _authority_table(rows: str) -> str:
    return ("<h2>Sites listed by the authority 上级下发未备案网站</h2><table><thead><tr><th>entry</th><th>hosted here</th>"
            f"<th>verdict</th><th>account</th><th>what was done</th></tr></thead><tbody>{rows}</tbody></table>")


def severity_rank(sev: str) -> int:
    return SEVERITY_ORDER.get(sev, 9)


def now() -> float:
    return time.time()
