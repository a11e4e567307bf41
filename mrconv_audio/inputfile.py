"""The checks every input audio file passes before anything opens it (no torch, no soundfile: light to import).

Opening is where bad files hurt: a FIFO named x.wav blocks the reader until some writer comes (forever), a device
file never ends, and a name that is not valid UTF-8 cannot be handed to libsndfile nor printed. So a file is first
looked at with stat() only, and refused with a reason that callers put in their error or skipped list.
"""
from __future__ import annotations

import os
import stat


def shown(path) -> str:
    """The path as text safe to print or write to JSON: bytes that are not UTF-8 appear as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def name_problem(path) -> str | None:
    """Why the name of `path` cannot be used (not valid UTF-8: libsndfile cannot open it, JSON and logs cannot hold
    it), or None."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return "the name is not valid UTF-8 (rename it)"
    return None


def file_problem(path) -> str | None:
    """Why `path` cannot be read as an audio file without opening it, or None if it is a readable regular file."""
    if problem := name_problem(path):
        return problem
    try:
        mode = os.stat(path).st_mode  # follows symlinks: a loop or a missing target raises
    except FileNotFoundError:  # a missing file, or a symlink to one
        return "no such file"
    except OSError as e:  # a symlink loop, a permission problem
        return f"cannot be opened ({e.strerror})"
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        return f"not a regular file ({kind})"
    return None

