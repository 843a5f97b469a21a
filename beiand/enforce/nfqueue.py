"""Inline mode: the packets that carry a flow's name wait in NFQUEUE for beiand's verdict.

Pure-Python netlink (no C dependency; the kernel's nft ``queue`` statement is missing on these
gateways, so the kernel side is an iptables ``NFQUEUE`` rule with ``--queue-bypass``: traffic
flows if beiand is gone, and ``connbytes`` so only a flow's first packets are queued).
``--queue-balance`` spreads flows over the workers' queues. beiand installs the rules at start
and removes them on stop; they carry the comment ``beiand`` (and live in beiand's own chain
``beiand``), and nothing else is touched. Rules with that comment left in FORWARD (or mangle
POSTROUTING) by an older beiand, such as its NFQUEUE rule from before the chain, are removed
with them.

Only what can decide is queued (issue 22): no bare ACK/FIN/RST, no SYN, and nothing of a flow
whose verdict is known. Three mark bits (:class:`Marks`) carry that through the kernel:

- ``decided`` (conntrack): an accepted flow's verdict is known. beiand sets it on the packet in
  the verdict (``NFQA_MARK``: the kernel here refuses a conntrack mark in the verdict,
  ``NFQA_CT`` gives ENOTSUP), a mangle POSTROUTING rule copies it into the conntrack
  (``CONNMARK --save-mark`` with masks), and the jump into the queue skips such connections.
- ``seen`` (conntrack): a packet of this connection was queued before.
- ``first`` (packet): set on the first queued packet of a connection (``seen`` not yet set):
  the decoder starts the flow afresh, as it did on the SYN (a new connection on a reused
  4-tuple is decided again, never taken for the old, already decided one).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shlex
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Sequence
from itertools import pairwise
from typing import NamedTuple

from beiand.errors import BeiandError

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_MARK, NFQA_PAYLOAD = 1, 2, 3, 10
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_GSO = 1, 4
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
_NLH = struct.Struct("=IHHII")


def _attr(t: int, data: bytes) -> bytes:
    ln = 4 + len(data)
    return struct.pack("=HH", ln, t) + data + b"\0" * ((4 - ln % 4) % 4)


class NfQueueError(BeiandError, OSError):
    pass


class Marks(NamedTuple):
    """beiand's four mark bits (packet and conntrack marks), from ``enforce.mark``."""

    decided: int
    seen: int
    first: int
    more: int  # conntrack: a later request head of a decided HTTP/1.x connection is not complete: queue the rest
    # (``seen`` on a verdict's packet mark: keep ``more`` as it is; see rule_specs' mangle rules)

    @classmethod
    def from_base(cls, base: int) -> Marks:
        if base <= 0 or base & (base - 1) or base > 1 << 28:
            raise ValueError(f"enforce.mark: {base:#x} is not a single bit at most 1 << 28 (beiand uses it and the next three)")
        return cls(base, base << 1, base << 2, base << 3)


DEFAULT_MARKS = Marks.from_base(0x10000000)  # enforce.mark's default


class Queued(NamedTuple):
    """One packet waiting for its verdict."""

    id: int
    mark: int  # the packet's mark as queued (``Marks.first`` set: the first queued of its connection)
    packet: bytes  # the IP packet


class NfQueue:
    def __init__(self, queue: int, maxlen: int = 4096, copy_range: int = 0xFFFF) -> None:
        self.queue = queue
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: room for bursts
        self.sock.bind((0, 0))
        self._seq = 0
        self._config(_attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)))
        self._config(_attr(NFQA_CFG_PARAMS, struct.pack("!IB", copy_range, NFQNL_COPY_PACKET)))
        self._config(_attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen)))
        # Fail open: a full queue accepts packets rather than dropping them. GSO (issue 36): a GSO/GRO
        # super-packet (a browser's 2 KB ClientHello written at once, merged by GRO on a NIC) comes
        # whole, as one packet with one verdict. Without the flag the kernel cuts it into segments
        # first and queues each with the super-packet's marks: every one of them carried ``first``,
        # so each started its flow afresh and the ClientHello was never whole.
        flags = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO
        self._config(_attr(NFQA_CFG_FLAGS, struct.pack("!I", flags)) + _attr(NFQA_CFG_MASK, struct.pack("!I", flags)))
        # The socket stays blocking (a verdict is never lost to a full buffer); reads that must
        # not wait pass MSG_DONTWAIT (no fcntl() around each send), and a waiting read gives up
        # after 0.1 s (SO_RCVTIMEO), so the thread that serves the queue sees a stop request.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 100_000))
        self.woke_ns = 0  # perf_counter_ns() when a waiting receive() got its first packet
        self._out: list[bytes] = []
        self.received = self.dropped = 0

    def _msg(self, mtype: int, body: bytes, flags: int = NLM_F_REQUEST) -> bytes:
        self._seq += 1
        nfgen = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(self.queue))
        return _NLH.pack(16 + len(nfgen) + len(body), (NFNL_SUBSYS_QUEUE << 8) | mtype, flags, self._seq, 0) + nfgen + body

    def _config(self, attrs: bytes) -> None:
        self.sock.send(self._msg(NFQNL_MSG_CONFIG, attrs, NLM_F_REQUEST | NLM_F_ACK))
        data = self.sock.recv(4096)
        _, mtype = struct.unpack_from("=IH", data)
        if mtype == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, 16)
            if err:
                raise NfQueueError(-err, f"NFQUEUE {self.queue}: config: {errno.errorcode.get(-err, err)}")

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self, limit: int = 256, wait: bool = False) -> list[Queued]:
        """What is waiting now (at most ``limit`` netlink reads): a batch is only what already
        waits, never filled by waiting for more. ``wait``: the first read waits for a packet (at
        most 0.1 s; one system call where poll() and a read took two)."""
        recv = self.sock.recv
        out: list[Queued] = []
        flags = 0 if wait else socket.MSG_DONTWAIT
        for _ in range(limit):
            try:
                data = recv(0x20000, flags)
            except BlockingIOError:  # nothing (more) waiting, or the waiting read's 0.1 s are over
                break
            if flags == 0:
                self.woke_ns = time.perf_counter_ns()
                flags = socket.MSG_DONTWAIT
            self._parse(data, out)
        self.received += len(out)
        return out

    @staticmethod
    def _parse(data: bytes, out: list[Queued]) -> None:
        """NFQNL_MSG_PACKET messages of one netlink read → ``out``."""
        pos = 0
        while pos + 16 <= len(data):
            ln, mtype = struct.unpack_from("=IH", data, pos)
            if ln < 16:
                break
            if mtype & 0xFF == NFQNL_MSG_PACKET and mtype >> 8 == NFNL_SUBSYS_QUEUE:
                pid, mark, payload = 0, 0, b""
                a = pos + 20
                end = pos + ln
                while a + 4 <= end:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    atype &= 0x7FFF
                    if atype == NFQA_PACKET_HDR:
                        (pid,) = struct.unpack_from("!I", data, a + 4)
                    elif atype == NFQA_MARK:
                        (mark,) = struct.unpack_from("!I", data, a + 4)
                    elif atype == NFQA_PAYLOAD:
                        payload = data[a + 4:a + alen]
                    a += (alen + 3) & ~3
                out.append(Queued(pid, mark, payload))
            pos += (ln + 3) & ~3

    def verdict(self, pid: int, accept: bool, mark: int | None = None) -> None:
        """Queue a verdict (sent by :meth:`send`); ``mark``: the packet's new mark (accept only)."""
        if not accept:
            self.dropped += 1
        body = _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT if accept else NF_DROP, pid))
        if mark is not None:
            body += _attr(NFQA_MARK, struct.pack("!I", mark))
        self._out.append(self._msg(NFQNL_MSG_VERDICT, body))
        if len(self._out) >= 64:
            self.send()

    def send(self) -> None:
        """Send the verdicts gathered so far in one system call."""
        if self._out:
            buf = b"".join(self._out)
            self._out.clear()
            self.sock.send(buf)

    def close(self) -> None:
        self.send()
        self.sock.close()


# -- the kernel side -------------------------------------------------------------------------


# A TCP packet that carries nothing (a bare SYN, ACK, FIN or RST) cannot change a verdict: the
# rule does not queue it. "Bare" is exact: the IP length is the IP header plus the TCP header (u32
# has no subtraction, so one test per TCP header length, 20..60). The SYN is not queued either:
# what it told the decoder (a connection starts, so a reused 4-tuple is decided again) the
# ``first`` mark now tells it on the first queued packet of each connection (issue 22). A SYN that
# carries data (TCP Fast Open) is queued. IPv4 with IP options and IPv6 with extension headers are
# queued as before.
_TCP_HEADER_LENGTHS = range(20, 64, 4)
CHAIN = "beiand"  # beiand's own filter chain: the jumps into it are the only rules in FORWARD
# The chain of the jumps that may start a name the next packets complete (a decided connection's
# later request head, an odd port's first bytes; issue 32): the connection's ``more`` bit is set
# here, as the packet is queued, so that its next packets are queued behind it. Set by the verdict
# instead, the packets sent right after it (while it waited in the queue) would pass unjudged.
MORE_CHAIN = "beiand-more"


def _payload_at(family: int, off: int) -> str:
    """The u32 location of a TCP segment's payload byte ``off`` (IPv4 without options, IPv6
    without extension headers)."""
    return f"0>>22&0x3C@12>>26&0x3C@{off}" if family == 4 else f"52>>26&0x3C@{40 + off}"


def request_head_test(family: int) -> str:
    """A u32 test true for a TCP segment whose payload starts with three upper-case letters (an
    HTTP/1.x method token: GET, POST, …; issue 32): on a decided connection such a segment may be
    a later request head (keep-alive) and is queued to be judged. The decoder checks the token."""
    return "&&".join(f"{_payload_at(family, 0)}>>{shift}&0xFF=0x41:0x5A" for shift in (24, 16, 8))


# What the decoder names a flow by on any port (issue 32): a copy of beiand.net.link's, which this
# package does not import (it reads no frame code); tests/unit/enforce checks the two are equal.
METHOD_WORDS = tuple(int.from_bytes(m, "big") for m in (
    b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC", b"PROP", b"MKCO", b"COPY", b"LOCK", b"MOVE",
    b"SEAR", b"UNLO", b"BIND", b"REBI", b"UNBI", b"ACL ", b"REPO", b"MKAC", b"CHEC", b"MERG", b"M-SE", b"NOTI", b"SUBS", b"UNSU",
    b"PURG", b"MKCA", b"LINK", b"UNLI", b"SOUR", b"QUER"))  # every method's first four bytes, as big-endian words
KNOWN_VERSIONS = (0x00000001, 0x6B3343CF, 0x54303530, 0x54303531)  # QUIC v1, v2, T050, T051
FIRST_DRAFT, LAST_DRAFT = 23, 34  # and the drafts 0xff000017..0xff000022
MIN_INITIAL = 1200
U32_MAX_VALUES = 10  # xt_u32 takes at most this many values or ranges in one test


def method_word_tests(family: int) -> list[str]:
    """u32 tests, one of which is true for a TCP segment whose payload starts with a known method's
    first four bytes (``GET ``, ``POST``, …; ``net.http.METHOD_WORDS``): on a port not watched,
    where another protocol's upper-case commands (SMTP's EHLO) are not requests (issue 32)."""
    words = sorted(METHOD_WORDS)
    return [f"{_payload_at(family, 0)}=" + ",".join(f"{w:#x}" for w in words[i:i + U32_MAX_VALUES])
            for i in range(0, len(words), U32_MAX_VALUES)]


def hello_start_test(family: int) -> str:
    """A u32 test true for a TCP segment whose payload starts with a TLS handshake record (``16 03``)."""
    return f"{_payload_at(family, 0)}>>16=0x1603"


def eol_start_test(family: int) -> str:
    """A u32 test true for a TCP segment whose payload starts with CR or LF: empty lines a server
    ignores before a request line (RFC 9112 section 2.2), sent to hide the method token behind."""
    return f"{_payload_at(family, 0)}>>24=0xa,0xd"


# ip6tables: a TCP packet whose IPv6 header is not followed by TCP itself (extension headers): the
# payload tests, which read at fixed offsets, cannot see its payload; such (rare) packets are queued.
IPV6_EXTENSIONS_TEST = "4>>8&0xFF=6"


def long_payload_test(family: int) -> str:
    """A u32 test true for a TCP segment with at least 8 bytes of payload (u32 fails a read past
    the packet's end): negated, with the bare tests, a first segment of 1 to 7 bytes, perhaps cut
    to hide what follows; the decoder reads it and what follows (``more``)."""
    return f"{_payload_at(family, 4)}=0:0xFFFFFFFF"


def quic_initial_test(family: int) -> str:
    """A u32 test true for a UDP datagram that starts like a QUIC Initial of a known version: a long
    header with the fixed bit, the version one beiand reads (``net.link.quic_known_version``)."""
    at = "0>>22&0x3C@" if family == 4 else ""
    first, version = ("8", "9") if family == 4 else ("48", "49")
    versions = [f"{v:#x}" for v in KNOWN_VERSIONS] + [f"{0xFF000000 | FIRST_DRAFT:#x}:{0xFF000000 | LAST_DRAFT:#x}"]
    return f"{at}{first}>>24&0xC0=0xC0&&{at}{version}=" + ",".join(versions)


def bare_tcp_tests(family: int) -> list[str]:
    """u32 tests, one per TCP header length, each true for a TCP packet without payload."""
    if family == 4:  # version 4, IHL 5; total length; data offset at 20 + 12
        return [f"0>>24=0x45&&0&0xFFFF={20 + d}&&32>>26&0x3C={d}" for d in _TCP_HEADER_LENGTHS]
    # IPv6: next header TCP, payload length; data offset at 40 + 12
    return [f"4>>8&0xFF=6&&4>>16={d}&&52>>26&0x3C={d}" for d in _TCP_HEADER_LENGTHS]


class Rule(NamedTuple):
    table: str
    chain: str
    spec: list[str]


def rule_specs(tcp_ports: Sequence[int], udp_ports: Sequence[int], first_queue: int, workers: int, packets: int,
               family: int = 4, marks: Marks | None = None, any_port: bool = False) -> list[Rule]:
    """One family's rules, in the order a packet meets them: the jumps from FORWARD (watched ports,
    the flow's first packets, something to read, verdict not known yet), the chain (mark the first
    queued packet of a connection, remember that one was queued, queue), and the mangle rule that
    saves beiand's ``decided`` packet mark into the conntrack.

    ``any_port`` (issue 32): on every other port, a client's segment among its connection's first
    ``packets`` that starts a ClientHello or a known method's request, or carries 1 to 7 bytes, is
    queued, and so is a datagram that starts like a QUIC Initial of a known version; a decided
    connection's later request heads there too (known methods only). The decoder reads such a
    connection once, at its first bytes: another protocol is decided at once and queued no more."""
    marks = marks or DEFAULT_MARKS
    target = (["--queue-num", str(first_queue)] if workers == 1
              else ["--queue-balance", f"{first_queue}:{first_queue + workers - 1}"])
    conn = ["-m", "connbytes", "--connbytes", f"0:{packets}", "--connbytes-dir", "original", "--connbytes-mode", "packets"]
    comment = ["-m", "comment", "--comment", "beiand"]
    undecided = ["-m", "connmark", "!", "--mark", f"{marks.decided:#x}/{marks.decided:#x}"]
    any_tcp = ["-p", "tcp", "-m", "conntrack", "--ctdir", "ORIGINAL"]  # any port, the client's direction (not the answers)
    rules = []
    not_bare = [a for t in bare_tcp_tests(family) for a in ("-m", "u32", "!", "--u32", t)]
    dports = ["-p", "tcp", "-m", "multiport", "--dports", ",".join(map(str, sorted(tcp_ports)))]
    # Issue 32: the rest of a later head not complete yet (``more``), whatever the connection's length
    more_rule = Rule("filter", "FORWARD", [*(any_tcp if any_port else dports), "-m", "connmark", "--mark",
                                           f"{marks.more:#x}/{marks.more:#x}", *not_bare, *comment, "-j", CHAIN])
    if tcp_ports:
        rules.append(Rule("filter", "FORWARD", [*dports, *conn, *undecided, *not_bare, *comment, "-j", CHAIN]))
        # and a decided connection's segment that starts like a request head (keep-alive)
        rules.append(more_rule)
        rules.append(Rule("filter", "FORWARD", [*dports, "-m", "connmark", "--mark", f"{marks.decided:#x}/{marks.decided:#x}",
                                                "-m", "u32", "--u32", request_head_test(family), *comment, "-j", MORE_CHAIN]))
        # and, on any port read, what could hide one from these tests: empty lines before it, a
        # segment of 1 to 7 bytes (a method cut: the decoder holds it, ``more`` takes the rest),
        # IPv6 extension headers (the tests' offsets miss the payload)
        decided = ["-m", "connmark", "--mark", f"{marks.decided:#x}/{marks.decided:#x}"]
        ports = any_tcp if any_port else dports
        rules.append(Rule("filter", "FORWARD", [*ports, *decided, "-m", "u32", "--u32", eol_start_test(family), *comment,
                                                "-j", MORE_CHAIN]))
        rules.append(Rule("filter", "FORWARD", [*ports, *decided, *not_bare, "-m", "u32", "!", "--u32", long_payload_test(family),
                                                *comment, "-j", MORE_CHAIN]))
        if family == 6:
            rules.append(Rule("filter", "FORWARD", [*ports, *decided, "-m", "u32", "!", "--u32", IPV6_EXTENSIONS_TEST,
                                                    *comment, "-j", MORE_CHAIN]))
    if any_port:
        if not tcp_ports:  # the watched ports' rules carry it otherwise
            rules.append(more_rule)
        odd = ["-p", "tcp", "-m", "multiport", "!", "--dports", ",".join(map(str, sorted({*tcp_ports, 53}))),
               "-m", "conntrack", "--ctdir", "ORIGINAL", *conn]
        for test in (hello_start_test(family), *method_word_tests(family), eol_start_test(family)):
            rules.append(Rule("filter", "FORWARD", [*odd, *undecided, "-m", "u32", "--u32", test, *comment, "-j", MORE_CHAIN]))
        if family == 6:
            rules.append(Rule("filter", "FORWARD", [*odd, *undecided, "-m", "u32", "!", "--u32", IPV6_EXTENSIONS_TEST, *comment,
                                                    "-j", MORE_CHAIN]))
        rules.append(Rule("filter", "FORWARD", [*odd, *undecided, *not_bare, "-m", "u32", "!", "--u32", long_payload_test(family),
                                                *comment, "-j", MORE_CHAIN]))
        for test in method_word_tests(family):
            rules.append(Rule("filter", "FORWARD", [*odd[:11], "-m", "connmark", "--mark", f"{marks.decided:#x}/{marks.decided:#x}",
                                                    "-m", "u32", "--u32", test, *comment, "-j", MORE_CHAIN]))
        rules.append(Rule("filter", "FORWARD", [
            "-p", "udp", "-m", "multiport", "!", "--dports", ",".join(map(str, sorted({*udp_ports, 53}))),
            "-m", "conntrack", "--ctdir", "ORIGINAL", *conn, *undecided,
            "-m", "length", "--length", f"{(20 if family == 4 else 40) + 8 + MIN_INITIAL}:65535",
            "-m", "u32", "--u32", quic_initial_test(family), *comment, "-j", CHAIN]))
    if udp_ports:
        rules.append(Rule("filter", "FORWARD", ["-p", "udp", "-m", "multiport", "--dports", ",".join(map(str, sorted(udp_ports))),
                                                *conn, *undecided, *comment, "-j", CHAIN]))
    if rules:
        d, s, f = (f"{m:#x}" for m in marks[:3])
        rules += [
            Rule("filter", MORE_CHAIN, [*comment, "-j", "CONNMARK", "--or-mark", f"{marks.more:#x}"]),
            Rule("filter", MORE_CHAIN, [*comment, "-j", CHAIN]),
            Rule("filter", CHAIN, ["-m", "connmark", "!", "--mark", f"{s}/{s}", *comment, "-j", "MARK", "--or-mark", f]),
            Rule("filter", CHAIN, [*comment, "-j", "CONNMARK", "--or-mark", s]),
            Rule("filter", CHAIN, [*comment, "-j", "NFQUEUE", *target, "--queue-bypass"]),
            # both bits from the verdict: ``decided``, and ``more`` set (a later head goes on) or cleared;
            # a verdict that also carries ``seen`` (a request head completed in the packet) saves
            # ``decided`` alone and leaves ``more`` as the kernel set it: another head may have been
            # queued meanwhile, its rest on the way (issue 32); the connection's next queued packet
            # clears it
            Rule("mangle", "POSTROUTING", ["-m", "mark", "--mark", f"{d}/{marks.decided | marks.seen:#x}", *comment, "-j",
                                           "CONNMARK", "--save-mark", "--nfmask", f"{marks.decided | marks.more:#x}",
                                           "--ctmask", f"{marks.decided | marks.more:#x}"]),
            Rule("mangle", "POSTROUTING", ["-m", "mark", "--mark", f"{marks.decided | marks.seen:#x}/{marks.decided | marks.seen:#x}",
                                           *comment, "-j", "CONNMARK", "--save-mark", "--nfmask", d, "--ctmask", d]),
        ]
    return rules


RuleSet = dict[str, list[Rule]]


def rule_set(tcp_ports: Sequence[int], udp_ports: Sequence[int], first_queue: int, workers: int, packets: int,
             marks: Marks | None = None, any_port: bool = False) -> RuleSet:
    """The rules of each tool (iptables, ip6tables)."""
    return {tool: rule_specs(tcp_ports, udp_ports, first_queue, workers, packets, family, marks, any_port)
            for tool, family in (("iptables", 4), ("ip6tables", 6))}


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, "-w", *args], capture_output=True, text=True)


def install_rules(rules: RuleSet) -> None:
    """Install (after removing what an earlier run may have left): the chain first, then the
    mangle rule, then the jumps into the chain, so no packet is queued before all is in place."""
    for tool, specs in rules.items():
        if shutil.which(tool) is None:
            raise NfQueueError(errno.ENOENT, f"{tool} is not installed (apt-get install iptables): inline mode needs it")
        _remove(tool, specs)
        if specs:
            _run(tool, "-N", CHAIN)
            _run(tool, "-N", MORE_CHAIN)
        position: dict[tuple[str, str], int] = {}
        for r in sorted(specs, key=lambda r: r.chain == "FORWARD"):
            if r.chain in (CHAIN, MORE_CHAIN):
                args = ["-t", r.table, "-A", r.chain, *r.spec]
            else:  # first in the built-in chain, in the given order
                n = position[(r.table, r.chain)] = position.get((r.table, r.chain), 0) + 1
                args = ["-t", r.table, "-I", r.chain, str(n), *r.spec]
            res = _run(tool, *args)
            if res.returncode != 0:
                raise NfQueueError(errno.EINVAL, f"{tool} {' '.join(args)}: {res.stderr.strip()}")
    log.info("inline: NFQUEUE rules installed (%d per family)", len(rules.get("iptables", [])))


# The built-in chains beiand puts rules in. A rule there carrying beiand's comment is beiand's,
# whatever its spec: an older beiand's (before issue 22, the NFQUEUE target sat in FORWARD itself,
# and queued the SYN), or a run's with other ports, queues or marks.
_BUILT_IN = (("filter", "FORWARD"), ("mangle", "POSTROUTING"))


def _ours(line: str, chain: str) -> list[str] | None:
    """The spec of an ``iptables -S`` line that is beiand's rule in ``chain`` (for ``-D``), else None."""
    try:
        args = shlex.split(line)
    except ValueError:
        return None
    if args[:2] != ["-A", chain]:
        return None
    if any(a == "--comment" and b == "beiand" for a, b in pairwise(args)):
        return args[2:]
    return None


def _sweep(tool: str) -> None:
    """Remove every rule of beiand's in the built-in chains, as listed by the kernel."""
    for table, chain in _BUILT_IN:
        res = _run(tool, "-t", table, "-S", chain)
        if res.returncode != 0:
            continue
        for line in res.stdout.splitlines():
            spec = _ours(line, chain)
            if spec is not None and _run(tool, "-t", table, "-D", chain, *spec).returncode != 0:
                log.warning("inline: could not remove an old beiand rule (%s -t %s %s)", tool, table, line)


def _remove(tool: str, specs: Sequence[Rule]) -> None:
    for r in specs:
        if r.chain not in (CHAIN, MORE_CHAIN):
            for _ in range(8):
                if _run(tool, "-t", r.table, "-D", r.chain, *r.spec).returncode != 0:
                    break
    _sweep(tool)  # what an older beiand left, which the specs of this one do not match
    for chain in (MORE_CHAIN, CHAIN):  # the first jumps into the second
        if _run(tool, "-F", chain).returncode == 0:
            _run(tool, "-X", chain)


def remove_rules(rules: RuleSet) -> None:
    for tool, specs in rules.items():
        if shutil.which(tool) is None:
            continue
        with contextlib.suppress(OSError):
            _remove(tool, specs)
