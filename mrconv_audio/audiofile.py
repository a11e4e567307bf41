"""Reading audio files with soundfile and numpy alone (no torch: the light runtime reads recordings with it).
mrconv_audio.data.audio re-exports both names."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .inputfile import file_problem, shown


class AudioError(ValueError):
    """An audio file that cannot be used, with the file named in the message."""


def load_audio(path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Read a file as float32 mono (channels averaged) in [-1, 1]. Returns (samples, sample_rate).
    Refused (AudioError naming the file): anything but a regular file, a name that is not UTF-8, a file soundfile
    cannot read, no samples, NaN or infinite samples."""
    import soundfile as sf

    problem = file_problem(path)  # before opening: a FIFO would block here forever
    if problem:
        raise AudioError(f"{shown(path)}: {problem}")
    path = Path(path)
    try:
        info = sf.info(str(path))
        if max_seconds is not None and info.frames > max_seconds * info.samplerate:
            raise AudioError(f"{path}: {info.frames / info.samplerate:.1f} s long, the limit is {max_seconds:g} s")
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: not a readable audio file ({e})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: contains no samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)
