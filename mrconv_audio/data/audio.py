"""Reading and shaping audio: soundfile for files (bit-exact, no FFmpeg), torchaudio for resampling.

Both are imported where they are used, so that training from a cache, evaluation and streaming at the model's own
rate need only torch and numpy (a bare GPU machine: benchmarks/gpu_check.sh)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..inputfile import file_problem, shown


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


def resample(x: torch.Tensor | np.ndarray, orig_rate: float, new_rate: float) -> torch.Tensor:
    """Band-limited (sinc) resampling along the last axis, any rational ratio (44.1 kHz <-> 16 kHz)."""
    x = torch.as_tensor(x)
    if orig_rate == new_rate:
        return x
    ratio = Fraction(orig_rate).limit_denominator(10_000) / Fraction(new_rate).limit_denominator(10_000)
    import torchaudio.functional as AF

    return AF.resample(x, ratio.numerator, ratio.denominator)


def decimate(x: torch.Tensor, factor: int) -> torch.Tensor:
    """The paper's naive decimation (keep every factor-th sample, no anti-aliasing filter)."""
    return x[..., ::factor]


def fit_length(x: torch.Tensor | np.ndarray, length: int) -> torch.Tensor:
    """Zero-pad at the end or cut to exactly `length` samples (last axis)."""
    x = torch.as_tensor(x)
    if x.shape[-1] >= length:
        return x[..., :length]
    return torch.nn.functional.pad(x, (0, length - x.shape[-1]))
