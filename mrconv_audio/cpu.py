"""CPU speed: keep glibc from returning large buffers to the OS after every tensor.

With glibc's defaults every allocation above the (dynamic) mmap threshold is a fresh mmap, page-faulted on first
touch and unmapped on free. MRConv's FFT buffers are 100+ MB, so an FFT convolution spends most of its time in page
faults. Raising the mmap and trim thresholds keeps freed memory in the heap for reuse: 2.5-4x faster layers
(benchmarks/layer.py). The price is that the process keeps its peak memory. The command-line tools turn it on;
set MRCONV_AUDIO_MALLOC=default to leave glibc alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_LARGE = 2**31 - 1  # bytes; mallopt takes an int
_tuned = False


def tune_allocator() -> bool:
    """Raise glibc's mmap/trim thresholds for this process. Returns True when applied (glibc only)."""
    global _tuned
    if _tuned:
        return True
    if os.environ.get("MRCONV_AUDIO_MALLOC", "").lower() == "default":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
    ok = all(
        mallopt(param, value) == 1
        for param, value in [(_M_MMAP_THRESHOLD, _LARGE), (_M_TRIM_THRESHOLD, _LARGE), (_M_TOP_PAD, 256 << 20)]
    )
    _tuned = ok
    return ok
