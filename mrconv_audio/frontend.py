"""Log-mel front end defined in seconds and Hz, so one model reads audio at any sample rate.

    x: (batch, time) at rate r  ->  (batch, n_mels, frames) log band energies, frame_rate frames per second

Everything is defined in seconds and Hz, then sampled at the input's rate:
- frame i is a Hann window of window_seconds centred on time i / frame_rate (centres rounded to the nearest sample
  where the hop is not a whole number of samples: 110.25 at 11,025 Hz), so every rate gives frame_rate frames a second;
- the FFT is 2 * window_seconds long, so its bins lie 1 / (2 * window_seconds) = 20 Hz apart at every rate, and the
  triangular mel filters (defined in Hz) are sampled at the same frequencies whatever the rate;
- power is normalized by the FFT size and the window's energy: a sinusoid of amplitude A reads A^2 / 4 summed over
  the bands (adjacent triangles sum to one between the first and the last centre), at every rate.
So the stack above sees the same features at 8 kHz as at 48 kHz, up to each rate's sample rounding. The bands stop at
f_max (4 kHz by default), what the lowest supported rate (2 * f_max) still carries.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn


def hz_to_mel(f: float | torch.Tensor):
    """HTK mel scale."""
    return 2595.0 * (math.log10(1 + f / 700.0) if isinstance(f, float) else torch.log10(1 + f / 700.0))


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10 ** (m / 2595.0) - 1)


@functools.lru_cache(maxsize=64)
def mel_filterbank(n_mels: int, f_min: float, f_max: float, rate: float, n_fft: int) -> torch.Tensor:
    """Triangular filters, evenly spaced in mel, evaluated at the rfft bins of n_fft at `rate`: (n_mels, n_fft//2+1)."""
    edges = mel_to_hz(torch.linspace(hz_to_mel(float(f_min)), hz_to_mel(float(f_max)), n_mels + 2, dtype=torch.float64))
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * rate / n_fft
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0).float()


def frame_count(samples: int, rate: float, frame_rate: float) -> int:
    """Frames of `samples` at `rate`: one per 1 / frame_rate seconds begun."""
    return math.ceil(samples * frame_rate / rate - 1e-9)


@functools.lru_cache(maxsize=64)
def frame_layout(samples: int, rate: float, frame_rate: float, window: int) -> torch.Tensor:
    """Sample indices of every frame into the input padded by window // 2 on each side: (frames, window)."""
    frames = frame_count(samples, rate, frame_rate)
    centres = torch.round(torch.arange(frames, dtype=torch.float64) * rate / frame_rate).long()
    return centres[:, None] + torch.arange(window)


class LogMel(nn.Module):
    """Fixed log-mel filterbank: no parameters, any input rate of at least 2 * f_max."""

    def __init__(self, n_mels: int = 40, f_min: float = 20.0, f_max: float = 4000.0, window_seconds: float = 0.025,
                 frame_rate: float = 100.0, floor: float = 1e-7):
        super().__init__()
        self.n_mels, self.f_min, self.f_max = n_mels, f_min, f_max
        self.window_seconds, self.frame_rate, self.floor = window_seconds, frame_rate, floor

    @property
    def min_rate(self) -> float:
        return 2 * self.f_max

    def frames(self, samples: int, rate: float) -> int:
        return frame_count(samples, rate, self.frame_rate)

    def forward(self, x: torch.Tensor, rate: float) -> torch.Tensor:
        if rate < self.min_rate:
            raise ValueError(f"a {rate:g} Hz input does not carry the front end's bands up to {self.f_max:g} Hz; "
                             f"expected at least {self.min_rate:g} Hz")
        window = self.window_length(rate)
        index = frame_layout(x.shape[-1], float(rate), float(self.frame_rate), window)
        padded = nn.functional.pad(x, (window // 2, window - window // 2))
        return self.log_mel(padded[:, index.to(x.device)], rate).transpose(1, 2)  # (B, n_mels, frames)

    def window_length(self, rate: float) -> int:
        """Samples in one frame at `rate`."""
        return round(self.window_seconds * rate)

    def log_mel(self, frames: torch.Tensor, rate: float) -> torch.Tensor:
        """Raw frames (..., window_length(rate)) -> log band energies (..., n_mels). The streaming engine calls it
        on the frames new audio brings, so that its features are these, computed the same way."""
        window = frames.shape[-1]
        n_fft = round(2 * self.window_seconds * rate)  # bins 1 / (2 * window_seconds) Hz apart at every rate
        hann = torch.hann_window(window, periodic=True, dtype=frames.dtype, device=frames.device)  # sin^2
        power = torch.fft.rfft(frames * hann, n=n_fft).abs().square() / (n_fft * hann.square().sum())
        bank = mel_filterbank(self.n_mels, self.f_min, self.f_max, float(rate), n_fft).to(frames.device, frames.dtype)
        return torch.log(torch.matmul(power, bank.T) + self.floor)

    def extra_repr(self) -> str:
        return (f"n_mels={self.n_mels}, band={self.f_min:g}-{self.f_max:g} Hz, window={self.window_seconds:g} s, "
                f"frame_rate={self.frame_rate:g}")
