"""Frame sources: pcap/pcapng files (and, in the daemon, live AF_PACKET sockets)."""

from beiand.capture.pcap import CaptureError, CaptureReader, read_capture

__all__ = ["CaptureError", "CaptureReader", "read_capture"]
