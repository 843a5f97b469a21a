"""Inline mode: the first packets of each watched flow wait in NFQUEUE for beiand's verdict.

Pure-Python netlink (no C dependency; the kernel's nft ``queue`` statement is missing on these
gateways, so the kernel side is an iptables ``NFQUEUE`` rule with ``--queue-bypass``: traffic
flows if beiand is gone, and ``connbytes`` so only a flow's first packets are queued).
``--queue-balance`` spreads flows over the workers' queues. beiand installs the rules at start
and removes them on stop; they carry the comment ``beiand`` and nothing else is touched.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator, Sequence

from beiand.errors import BeiandError

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_PAYLOAD = 1, 2, 10
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_FAIL_OPEN = 1
NF_DROP, NF_ACCEPT = 0, 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
_NLH = struct.Struct("=IHHII")


def _attr(t: int, data: bytes) -> bytes:
    ln = 4 + len(data)
    return struct.pack("=HH", ln, t) + data + b"\0" * ((4 - ln % 4) % 4)


class NfQueueError(BeiandError, OSError):
    pass


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
        # Fail open: a full queue accepts packets rather than dropping them.
        self._config(_attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)) +
                     _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN)))
        self.sock.setblocking(False)
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

    def packets(self, limit: int = 256) -> Iterator[tuple[int, bytes]]:
        """(packet id, IP packet) of what is waiting, without blocking."""
        recv = self.sock.recv
        for _ in range(limit):
            try:
                data = recv(0x20000)
            except BlockingIOError:
                return
            pos = 0
            while pos + 16 <= len(data):
                ln, mtype = struct.unpack_from("=IH", data, pos)
                if ln < 16:
                    break
                if mtype & 0xFF == NFQNL_MSG_PACKET and mtype >> 8 == NFNL_SUBSYS_QUEUE:
                    pid, payload = 0, b""
                    a = pos + 20
                    end = pos + ln
                    while a + 4 <= end:
                        alen, atype = struct.unpack_from("=HH", data, a)
                        if alen < 4:
                            break
                        atype &= 0x7FFF
                        if atype == NFQA_PACKET_HDR:
                            (pid,) = struct.unpack_from("!I", data, a + 4)
                        elif atype == NFQA_PAYLOAD:
                            payload = data[a + 4:a + alen]
                        a += (alen + 3) & ~3
                    self.received += 1
                    yield pid, payload
                pos += (ln + 3) & ~3

    def verdict(self, pid: int, accept: bool) -> None:
        if not accept:
            self.dropped += 1
        self._out.append(self._msg(NFQNL_MSG_VERDICT, _attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT if accept else NF_DROP, pid))))
        if len(self._out) >= 64:
            self.send()

    def send(self) -> None:
        """Send the verdicts gathered so far in one system call."""
        if self._out:
            buf = b"".join(self._out)
            self._out.clear()
            self.sock.setblocking(True)
            try:
                self.sock.send(buf)
            finally:
                self.sock.setblocking(False)

    def close(self) -> None:
        self.send()
        self.sock.close()


# -- the kernel side -------------------------------------------------------------------------


# A TCP packet that carries nothing (a bare ACK, FIN or RST) cannot change a verdict: the rule
# does not queue it. "Bare" is exact: the IP length is the IP header plus the TCP header (u32 has
# no subtraction, so one test per TCP header length, 20..60). The SYN stays queued: it is what
# tells the decoder a connection starts (a new connection on a reused 4-tuple must be decided
# again). IPv4 with IP options and IPv6 with extension headers are queued as before.
_TCP_HEADER_LENGTHS = range(20, 64, 4)


def bare_tcp_tests(family: int) -> list[str]:
    """u32 tests, one per TCP header length, each true for a TCP packet without payload or SYN."""
    if family == 4:  # version 4, IHL 5; total length; data offset and flags at 20 + 12
        return [f"0>>24=0x45&&0&0xFFFF={20 + d}&&32>>26&0x3C={d}&&32>>16&0x02=0" for d in _TCP_HEADER_LENGTHS]
    # IPv6: next header TCP, payload length; data offset and flags at 40 + 12
    return [f"4>>8&0xFF=6&&4>>16={d}&&52>>26&0x3C={d}&&52>>16&0x02=0" for d in _TCP_HEADER_LENGTHS]


def rule_specs(tcp_ports: Sequence[int], udp_ports: Sequence[int], first_queue: int, workers: int, packets: int,
               family: int = 4) -> list[list[str]]:
    target = (["--queue-num", str(first_queue)] if workers == 1
              else ["--queue-balance", f"{first_queue}:{first_queue + workers - 1}"])
    conn = ["-m", "connbytes", "--connbytes", f"0:{packets}", "--connbytes-dir", "original", "--connbytes-mode", "packets"]
    tail = ["-m", "comment", "--comment", "beiand", "-j", "NFQUEUE", *target, "--queue-bypass"]
    specs = []
    if tcp_ports:
        not_bare = [a for t in bare_tcp_tests(family) for a in ("-m", "u32", "!", "--u32", t)]
        specs.append(["-p", "tcp", "-m", "multiport", "--dports", ",".join(map(str, sorted(tcp_ports))), *conn, *not_bare,
                      *tail])
    if udp_ports:
        specs.append(["-p", "udp", "-m", "multiport", "--dports", ",".join(map(str, sorted(udp_ports))), *conn, *tail])
    return specs


RuleSet = dict[str, list[list[str]]]


def rule_set(tcp_ports: Sequence[int], udp_ports: Sequence[int], first_queue: int, workers: int, packets: int) -> RuleSet:
    """The rules of each tool (iptables, ip6tables)."""
    return {tool: rule_specs(tcp_ports, udp_ports, first_queue, workers, packets, family)
            for tool, family in (("iptables", 4), ("ip6tables", 6))}


def install_rules(rules: RuleSet) -> None:
    for tool, specs in rules.items():
        if shutil.which(tool) is None:
            raise NfQueueError(errno.ENOENT, f"{tool} is not installed (apt-get install iptables): inline mode needs it")
        for spec in specs:
            remove_rule(tool, spec)  # never twice
            r = subprocess.run([tool, "-w", "-I", "FORWARD", *spec], capture_output=True, text=True)
            if r.returncode != 0:
                raise NfQueueError(errno.EINVAL, f"{tool}: {r.stderr.strip()}")
    log.info("inline: NFQUEUE rules installed (%d per family)", len(rules.get("iptables", [])))


def remove_rule(tool: str, spec: list[str]) -> None:
    for _ in range(8):
        r = subprocess.run([tool, "-w", "-D", "FORWARD", *spec], capture_output=True, text=True)
        if r.returncode != 0:
            return


def remove_rules(rules: RuleSet) -> None:
    for tool, specs in rules.items():
        if shutil.which(tool) is None:
            continue
        for spec in specs:
            with contextlib.suppress(OSError):
                remove_rule(tool, spec)
