"""beiand: 先备案后接入 enforcement for network-access providers."""

from importlib.metadata import PackageNotFoundError, version

from beiand import extensions

try:
    __version__ = version("beiand")  # one source: pyproject.toml, through the installed metadata
except PackageNotFoundError:  # a checkout on sys.path without pip install
    __version__ = "0+unknown"

# Before any hot-path module is imported: its compiled twin, or its .py (BEIAND_NO_EXTENSIONS=1,
# not built, or built from another source). See beiand/extensions.py.
extensions.install()
