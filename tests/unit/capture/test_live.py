"""A capture ring's own counters (``LiveCapture.metrics``), without a socket: the kernel's
``PACKET_STATISTICS`` (reset by each read, added up here) through a stand-in. The ring itself
is tested on a real interface in tests/integration/test_live_capture.py."""

from __future__ import annotations

import struct

from beiand.capture.live import KernelStats, LiveCapture
from beiand.model import MetricKey


class KernelCounters:
    """getsockopt(PACKET_STATISTICS): packets and drops since the last read."""

    def __init__(self, *reads: tuple[int, int]) -> None:
        self.reads = list(reads)

    def getsockopt(self, level: int, opt: int, size: int) -> bytes:
        packets, drops = self.reads.pop(0)
        return struct.pack("III", packets, drops, 0)


def ring(*reads: tuple[int, int]) -> LiveCapture:
    cap = LiveCapture.__new__(LiveCapture)
    cap.sock = KernelCounters(*reads)  # type: ignore[assignment]
    cap._kstats = KernelStats()
    cap.frames_read = cap.bytes_read = cap.link_errors = 0
    return cap


def test_metrics_are_cumulative_although_the_kernel_resets_its_counters_on_read() -> None:
    cap = ring((7, 2), (3, 0))
    cap.frames_read, cap.bytes_read, cap.link_errors = 5, 640, 1
    assert cap.metrics() == {MetricKey("beiand_capture_kernel_packets"): 7, MetricKey("beiand_capture_kernel_drops"): 2,
                             MetricKey("beiand_capture_userspace_packets"): 5, MetricKey("beiand_capture_userspace_bytes"): 640,
                             MetricKey("beiand_capture_link_errors"): 1}
    m = cap.metrics()
    assert m[MetricKey("beiand_capture_kernel_packets")] == 10 and m[MetricKey("beiand_capture_kernel_drops")] == 2
