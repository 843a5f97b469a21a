"""beiand: 先备案后接入 enforcement for network-access providers."""

__version__ = "0.1.0"
