"""What the apps do to audio before the model sees it: a DC offset is removed, and samples beyond full scale are
brought back to [-1, 1]. Numpy only (the torch-free runtime uses it too).

Why: the model was trained on clips centred on zero and within [-1, 1]. A DC offset (cheap microphones, some
sound cards) puts energy into the lowest mel band and, in a stream, a step wherever the offset meets the window's
zero padding: measured on the shipped model, constant 0.3 alone reads as "off", and a "stop" with 0.2 of offset
also fired "off". Float audio scaled far beyond full scale (integer PCM written as float) lifts the quiet parts
over the front end's log floor: "stop" x 1e5 fired "down".

    remove_dc   a one-pole high-pass at 10 Hz (speech starts above 80 Hz), started at the audio's first sample so
                a constant offset is gone from the first sample, not after a transient
    fit_full_scale
                a whole file or clip whose peak (from its mean) exceeds 1 is scaled down to peak 1 (its shape
                kept, nothing clipped); a live stream, whose future peak is unknown, is clipped instead (after DC
                removal) and the samples counted
"""
from __future__ import annotations

import math

import numpy as np

DC_CUTOFF_HZ = 10.0


class DCBlocker:
    """y[n] = x[n] - m[n], where m is the running DC estimate m[n] = a m[n-1] + (1 - a) x[n-1] (a one-pole
    high-pass with its pole at `cutoff_hz`). Stateful: feed a stream block by block and the result equals one
    call on the whole stream."""

    def __init__(self, sample_rate: float, cutoff_hz: float = DC_CUTOFF_HZ):
        self.a = math.exp(-2 * math.pi * cutoff_hz / float(sample_rate))
        self.chunk = max(1, min(8192, int(40 / -math.log(self.a))))  # _chunk divides by a**n: keep it below e**40
        self.reset()

    def reset(self) -> None:
        self.estimate: float | None = None  # m[n] for the next sample

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if not len(x):
            return x.copy()
        if self.estimate is None:  # start at the audio's first sample: a constant offset leaves no transient, and
            self.estimate = float(x[0])  # the result does not depend on how a stream is cut into blocks
        out = np.empty(len(x), np.float32)
        for lo in range(0, len(x), self.chunk):
            out[lo : lo + self.chunk] = self._chunk(x[lo : lo + self.chunk].astype(np.float64))
        return out

    def _chunk(self, x: np.ndarray) -> np.ndarray:
        # m[n] = a^n m[0] + (1 - a) sum_{k<n} a^(n-1-k) x[k]  (n = 0..N-1, m[0] carried over from the last chunk)
        a = self.a
        powers = a ** np.arange(len(x), dtype=np.float64)  # a^n
        inner = np.cumsum(x / powers)  # sum_{k<=n} a^-k x[k]
        estimate = np.empty(len(x))
        estimate[0] = self.estimate
        estimate[1:] = powers[1:] * self.estimate + (1 - a) * powers[:-1] * inner[:-1]
        self.estimate = float(a * estimate[-1] + (1 - a) * x[-1])
        return (x - estimate).astype(np.float32)


def remove_dc(x: np.ndarray, sample_rate: float) -> np.ndarray:
    """A whole clip through a fresh DCBlocker."""
    return DCBlocker(sample_rate)(x)


def fit_full_scale(x: np.ndarray) -> tuple[np.ndarray, float]:
    """A clip whose peak, measured from its mean (an offset is removed anyway), exceeds full scale, scaled down to
    peak 1. Returns (audio, gain applied: 1.0 when none)."""
    peak = float(np.max(np.abs(x - np.mean(x, dtype=np.float64)))) if len(x) else 0.0
    if peak <= 1.0:
        return x, 1.0
    return (x / peak).astype(np.float32), 1.0 / peak


def full_scale_notes(gain: float) -> list[str]:
    """What the apps say about a clip fit_full_scale scaled by `gain`: nothing when it was not scaled."""
    if gain == 1.0:
        return []
    return [f"samples reach {1 / gain:.3g}, beyond full scale [-1, 1] (integer PCM stored as float?): scaled down by "
            f"{1 / gain:.3g} before classifying"]
