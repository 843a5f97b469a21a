"""Build dashboards/beiand.json (Grafana, current schema). Run: python dashboards/build.py
The test suite checks the committed JSON equals this output and evaluates every panel's
query against a real Prometheus scraping a running beiand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

I = '{instance=~"$instance"}'  # noqa: E741
DS = {"type": "prometheus", "uid": "${datasource}"}
# (title, type, unit, [(expr, legend)], core: must return data in the lab test)
PANELS = [
    ("Observations by kind", "timeseries", "ops", [(f"sum by (kind) (rate(beiand_observations_total{I}[$__rate_interval]))", "{{kind}}")], True),
    ("Verdicts", "timeseries", "ops", [(f"sum by (verdict) (rate(beiand_verdicts_total{I}[$__rate_interval]))", "{{verdict}}")], True),
    ("Unfiled (range)", "stat", "short",
     [('sum(increase(beiand_verdicts_total{instance=~"$instance",verdict="unfiled"}[$__range]))', "unfiled")], True),
    ("Mismatch (range)", "stat", "short",
     [('sum(increase(beiand_verdicts_total{instance=~"$instance",verdict="mismatch"}[$__range]))', "mismatch")], True),
    ("Unfiled served, by action", "timeseries", "ops",
     [('sum by (action) (rate(beiand_verdict_actions_total{instance=~"$instance",verdict=~"unfiled|mismatch|inactive"}[$__rate_interval]))',
       "{{action}}")], True),
    ("Enforcement actions", "timeseries", "ops",
     [(f"sum by (action) (rate(beiand_enforcement_actions_total{I}[$__rate_interval]))", "{{action}}")], False),
    ("Enforcement latency (packet → action)", "timeseries", "s",
     [(f"histogram_quantile(0.5, sum by (le) (rate(beiand_enforcement_latency_seconds_bucket{I}[$__rate_interval])))", "p50"),
      (f"histogram_quantile(0.99, sum by (le) (rate(beiand_enforcement_latency_seconds_bucket{I}[$__rate_interval])))", "p99")],
     False),
    ("Circuit breaker open", "stat", "short", [(f"max(beiand_enforcement_breaker_open{I})", "open")], False),
    ("Decision latency (packet → decision)", "timeseries", "s",
     [(f"histogram_quantile(0.5, sum by (le) (rate(beiand_decision_latency_seconds_bucket{I}[$__rate_interval])))", "p50"),
      (f"histogram_quantile(0.99, sum by (le) (rate(beiand_decision_latency_seconds_bucket{I}[$__rate_interval])))", "p99")], False),
    ("Packets on watched interfaces", "timeseries", "pps",
     [(f"sum by (interface, direction) (rate(beiand_interface_packets_total{I}[$__rate_interval]))", "{{interface}} {{direction}}")],
     True),
    ("Packets reaching user space, per worker", "timeseries", "pps",
     [(f"sum by (worker) (rate(beiand_capture_userspace_packets_total{I}[$__rate_interval]))", "worker {{worker}}")], True),
    ("Kernel drops, per worker", "timeseries", "pps",
     [(f"sum by (worker) (rate(beiand_capture_kernel_drops_total{I}[$__rate_interval]))", "worker {{worker}}")], True),
    ("Decode errors", "timeseries", "ops",
     [(f"sum by (reason) (rate(beiand_decode_errors_total{I}[$__rate_interval]))", "{{reason}}")], False),
    ("Flows tracked", "timeseries", "short", [(f"sum by (worker) (beiand_flows{I})", "worker {{worker}}")], True),
    ("Workers running / restarts", "timeseries", "short",
     [(f"sum(beiand_workers_running{I})", "running"), (f"sum(increase(beiand_worker_restarts_total{I}[$__rate_interval]))", "restarts")],
     True),
    ("Filings loaded", "stat", "short", [(f"max(beiand_records_filings{I})", "filings")], True),
    ("Records age vs records.max_age_hours", "stat", "s",
     [(f"max(beiand_records_age_seconds{I})", "age"), (f"max(beiand_records_max_age_seconds{I})", "stale after")], True),
    ("Reloads", "timeseries", "short", [(f"sum by (result) (increase(beiand_reloads_total{I}[$__rate_interval]))", "{{result}}"),
                                        (f"sum(increase(beiand_records_reload_refused_total{I}[$__rate_interval]))",
                                         "records refused (max_loss)")], False),
    ("Access-log records written", "timeseries", "ops", [(f"sum(rate(beiand_accesslog_records_total{I}[$__rate_interval]))", "records/s")],
     True),
    ("Access-log fsync latency", "timeseries", "s",
     [(f"histogram_quantile(0.99, sum by (le) (rate(beiand_accesslog_fsync_seconds_bucket{I}[$__rate_interval])))", "p99")], False),
    ("Retention held vs required (days)", "timeseries", "d",
     [(f"max(beiand_accesslog_oldest_record_age_seconds{I}) / 86400", "held"), (f"max(beiand_accesslog_retention_seconds{I}) / 86400", "required")],
     True),
    ("Access-log write errors and lost records", "timeseries", "short",
     [(f"sum(increase(beiand_accesslog_write_errors_total{I}[$__rate_interval]))", "write errors"),
      (f"sum(increase(beiand_accesslog_lost_records_total{I}[$__rate_interval]))", "lost")], True),
    ("ClickHouse sink: written, spilled, replayed, errors, lost", "timeseries", "short",
     [(f"sum(increase(beiand_clickhouse_records_written_total{I}[$__rate_interval]))", "written"),
      (f"sum(increase(beiand_clickhouse_records_spilled_total{I}[$__rate_interval]))", "spilled"),
      (f"sum(increase(beiand_clickhouse_records_replayed_total{I}[$__rate_interval]))", "replayed"),
      (f"sum(increase(beiand_clickhouse_write_errors_total{I}[$__rate_interval]))", "write errors"),
      (f"sum(increase(beiand_clickhouse_lost_records_total{I}[$__rate_interval]))", "lost")], False),
    ("Chain verification problems", "stat", "short", [(f"max(beiand_accesslog_verify_problems{I})", "problems")], False),
    ("Audit findings", "bargauge", "short", [(f"sum by (kind) (beiand_audit_findings{I})", "{{kind}}")], False),
    ("Decision store: version applied vs the store's (0 up: enforcing the last snapshot)", "timeseries", "short",
     [(f"max by (instance) (beiand_decision_store_head{I})", "store {{instance}}"),
      (f"min by (instance) (beiand_decision_store_applied_version{I})", "applied {{instance}}"),
      (f"min by (instance) (beiand_decision_store_up{I})", "up {{instance}}")], True),
    ("ISMS CU (beiand isms serve): gateways, faulty houses (DT 7), commands not yet applied, acks waiting", "timeseries", "short",
     [(f"sum by (state) (beiand_isms_fleet_gateways{I})", "gateways {{state}}"),
      ("sum(beiand_isms_houses{state=\"faulty\",instance=~\"$instance\"})", "faulty houses"),
      (f"max(beiand_isms_gateways_behind{I})", "gateways behind"),
      (f"sum(beiand_isms_acks_waiting{I})", "acks waiting"),
      (f"max(beiand_isms_command_unapplied_seconds{I})", "oldest unapplied (s)")], False),  # the CU's: not a gateway's
    # Sponsor cases (issue 31): the store's cases as this gateway's keeper last folded them
    ("Sponsor cases by state (整改 → 取消接入)", "timeseries", "short",
     [(f"max by (state) (beiand_cases{I})", "{{state}}")], False),
    ("Sponsor notices, escalations, resolutions", "timeseries", "short",
     [(f"sum by (kind, result) (increase(beiand_case_notices_total{I}[$__rate_interval]))", "{{kind}} {{result}}"),
      (f"sum(increase(beiand_case_escalations_total{I}[$__rate_interval]))", "escalated (取消接入)"),
      (f"sum by (reason) (increase(beiand_cases_resolved_total{I}[$__rate_interval]))", "closed: {{reason}}"),
      (f"max(beiand_case_notices_unsent{I})", "notices unsent")], False),
    # IP地址备案 (issue 35; docs/ip-report.md): changes of the allocated blocks not yet reported
    ("IP地址备案: changes unreported, and past their five-working-day deadline (501号 art. 19)", "timeseries", "short",
     [(f"max(beiand_ip_report_unreported_changes{I})", "unreported"),
      (f"max(beiand_ip_report_overdue_changes{I})", "overdue")], False),
    # The authority's lists (issue 35): the sites listed and in force, and the conflicts for a person
    ("Authority's lists (上级下发未备案网站): entries in force, conflicts with the records", "timeseries", "short",
     [("max(beiand_overlay_rules{overlay=\"authority\",instance=~\"$instance\"})", "entries in force"),
      (f"max(beiand_authority_conflicts{I})", "conflicts (for a person)")], False),
]


def build() -> dict:  # type: ignore[type-arg]
    panels = []
    for i, (title, ptype, unit, targets, _core) in enumerate(PANELS):
        w = 8 if ptype in ("stat", "bargauge") else 12
        panels.append({
            "id": i + 1, "type": ptype, "title": title, "datasource": DS,
            "gridPos": {"h": 8, "w": w, "x": (i * 12) % 24, "y": (i // 2) * 8},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}} if ptype == "timeseries" else {},
            "targets": [{"refId": chr(65 + j), "datasource": DS, "expr": e, "legendFormat": lg} for j, (e, lg) in enumerate(targets)],
        })
    return {
        "title": "beiand: 备案 enforcement and the access log", "uid": "beiand-overview", "tags": ["beiand", "备案"],
        "schemaVersion": 39, "version": 1, "editable": True, "timezone": "browser", "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus", "current": {}},
            {"name": "instance", "label": "Gateway", "type": "query", "datasource": DS, "refresh": 2, "includeAll": True, "multi": True,
             "query": {"query": "label_values(beiand_build_info, instance)", "refId": "instance"},
             "definition": "label_values(beiand_build_info, instance)", "current": {}},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def core_titles() -> list[str]:
    return [p[0] for p in PANELS if p[4]]


def render() -> str:
    return json.dumps(build(), ensure_ascii=False, indent=2) + "\n"


if __name__ == "__main__":
    out = Path(__file__).parent / "beiand.json"
    if "--check" in sys.argv:
        sys.exit(0 if out.read_text(encoding="utf-8") == render() else 1)
    out.write_text(render(), encoding="utf-8")
