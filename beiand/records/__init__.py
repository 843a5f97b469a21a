"""Filing records (备案): numbers, domain normalisation, import and the in-memory index."""

from beiand.records.domains import DomainError, normalise_domain, registrable_domain
from beiand.records.importer import ImportIssue, ImportRefused, ImportResult, load_file, load_files
from beiand.records.index import RecordIndex, build_index
from beiand.records.numbers import FilingNumber, FilingNumberError, parse_filing_number

__all__ = [
    "DomainError", "FilingNumber", "FilingNumberError", "ImportIssue", "ImportRefused", "ImportResult",
    "RecordIndex", "build_index", "load_file", "load_files", "normalise_domain", "parse_filing_number",
    "registrable_domain",
]
