"""Linear (non-circular) FFT convolution, causal or bidirectional: the one place for padding rules.

Kernels travel as a tensor of shape (directions, channels, taps):
  direction 0 is causal:       y[t] += k[0, h, s] * u[t - s]       s = 0 .. taps-1
  direction 1 is anti-causal:  y[t] += k[1, h, s] * u[t + s + 1]   (S4's convention: lag 0 belongs to the causal half)
"""
from __future__ import annotations

import torch


def fast_fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: sizes pocketfft/cuFFT handle fastest."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def fft_size(length: int, taps: int) -> int:
    """FFT length for which circular convolution equals linear convolution on [0, length).

    Causal taps reach back taps-1 samples and anti-causal taps forward `taps`: wrap-around stays in the
    zero padding when n >= length + taps (one sample more than causal-only needs, kept simple).
    """
    return fast_fft_size(length + taps)


def kernel_spectrum(k: torch.Tensor, n: int) -> torch.Tensor:
    """k: (directions, H, taps) -> rfft of the kernel laid out on a circle of n samples: (H, n//2+1)."""
    directions, channels, taps = k.shape
    if 2 * taps > n:
        raise ValueError(f"kernel of {taps} taps does not fit an FFT of size {n}")
    if directions == 1:
        return torch.fft.rfft(k[0], n=n)
    # Anti-causal tap s acts at lag -(s+1): position n-1-s on the circle.
    gap = k.new_zeros(channels, n - 2 * taps)
    return torch.fft.rfft(torch.cat([k[0], gap, k[1].flip(-1)], dim=-1))


def fft_conv(u_f: torch.Tensor, k_f: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """Multiply spectra and return to time: u_f (B, H, F), k_f (H, F) or (..., H, F) -> (B, [...], H, length)."""
    return torch.fft.irfft(u_f * k_f, n=n)[..., :length]


def direct_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Reference O(L * taps) convolution with the same conventions, for tests: u (B, H, L), k (D, H, taps)."""
    batch, channels, length = u.shape
    directions, _, taps = k.shape
    y = torch.zeros_like(u)
    for s in range(min(taps, length)):
        y[..., s:] += k[0, :, s, None] * u[..., : length - s]
        if directions == 2 and s + 1 < length:
            y[..., : length - s - 1] += k[1, :, s, None] * u[..., s + 1:]
    return y
