"""Make the helper modules importable whatever pytest's import mode, and import submitit before capturing."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

# submitit configures its logger with StreamHandlers on sys.stdout / sys.stderr when it is first imported.
# Imported inside a test, those are pytest's capture streams, closed after that test, and a later sweep's log
# line then fails with "I/O operation on closed file" (and breaks capturing for the rest of the worker).
# Importing it here binds the handlers to the real streams, as in any program.
try:
    import submitit  # noqa: F401
except ImportError:
    pass
