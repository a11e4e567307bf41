"""Reading and shaping audio: soundfile for files (bit-exact, no FFmpeg), torchaudio for resampling.

Both are imported where they are used, so that training from a cache, evaluation and streaming at the model's own
rate need only torch and numpy (a bare GPU machine: benchmarks/gpu_check.sh)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from ..audiofile import AudioError, load_audio  # noqa: F401  (torch-free, for the light runtime)


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
