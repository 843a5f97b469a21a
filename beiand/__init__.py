"""beiand: 先备案后接入 enforcement for network-access providers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("beiand")  # one source: pyproject.toml, through the installed metadata
except PackageNotFoundError:  # a checkout on sys.path without pip install
    __version__ = "0+unknown"
