"""Hand memory freed after a bulk load back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

_LOGGER = logging.getLogger(__name__)


def release_free_memory() -> bool:
    """Ask glibc to return free heap pages (``malloc_trim``); False where that is not available.

    Loading a large site grows and frees big buffers; glibc keeps those pages unless asked, and
    on a Pi the difference is several megabytes of resident memory for the life of the process.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # musl and non-Linux C libraries have no malloc_trim
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
