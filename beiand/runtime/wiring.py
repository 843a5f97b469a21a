"""Settings → components: the one place that turns the config into what decides.

The daemon, ``replay``, ``audit``, ``records lookup`` and ``check-config`` all build their
policy here, so they decide alike (issue 13: one answer everywhere; DESIGN.md ``wiring``).
"""

from __future__ import annotations

import ipaddress

from beiand.model import Mode
from beiand.net.decoder import DecoderConfig
from beiand.policy import PolicyConfig, PolicyError
from beiand.records.domains import DomainError, normalise_domain
from beiand.runtime.settings import Config, ConfigError


def policy_config(cfg: Config) -> PolicyConfig:
    """The policy every command builds from the config: the daemon, ``replay``, ``audit``,
    ``records lookup`` and ``/api/v1/lookup`` all decide from this one (issue 13: one answer
    everywhere). Raises ``ConfigError`` naming the field."""
    problems: list[tuple[str, str]] = []

    def names(dotted: str, items: list[str]) -> list[str]:
        out = []
        for n in items:
            try:
                out.append(normalise_domain(n[2:] if n.startswith("*.") else n))
            except DomainError as exc:
                problems.append((dotted, f"{n!r}: {exc.reason}"))
        return out

    allow = names("policy.allow", cfg.policy.allow)
    suffixes = names("policy.allow_suffixes", cfg.policy.allow_suffixes)
    for i, p in enumerate(cfg.policy.allow_prefixes):
        try:
            ipaddress.ip_network(p, strict=False)
        except ValueError:
            problems.append(("policy.allow_prefixes", f"item {i + 1}: {p!r} is not a CIDR prefix"))
    if problems:
        raise ConfigError([f"{d}: {w}" for d, w in problems], problems)
    provider = [p.strip() for p in cfg.records.provider if p.strip()]
    try:
        return PolicyConfig(
            provider=provider[0] if provider else "", providers=tuple(provider[1:]), allow_names=frozenset(allow),
            allow_suffixes=tuple(suffixes),
            allow_prefixes=tuple(str(ipaddress.ip_network(p, strict=False)) for p in cfg.policy.allow_prefixes),
            default_mode=Mode(cfg.policy.default_mode), pending_mode=Mode(cfg.policy.pending_mode) if cfg.policy.pending_mode else None,
            access_pending_grace_days=cfg.policy.grace_days)
    except PolicyError as exc:
        raise ConfigError([f"policy: {exc}"], [("policy", str(exc))]) from None


def decoder_config(cfg: Config) -> DecoderConfig:
    """The decoder of a capture worker: watched ports and the reassembly bounds (issue 17)."""
    ra = cfg.reassembly
    return DecoderConfig(tcp_ports=frozenset(cfg.capture.tcp_ports), udp_ports=frozenset(cfg.capture.udp_ports),
                         max_flow_bytes=ra.max_flow_bytes, max_flow_holes=ra.max_holes, reassembly_tcp_bytes=ra.tcp_bytes,
                         reassembly_quic_bytes=ra.quic_bytes, reassembly_fragment_bytes=ra.fragment_bytes)
