"""Looking at the gateway's SQLite files from outside, the way an operator would."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def plain(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to ``path``, closed on exit."""
    conn = sqlite3.connect(path)
    try:
        yield conn
    finally:
        conn.close()
