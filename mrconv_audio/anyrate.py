"""A layer's frequency response at another sample rate, defined by what it does at its training rate.

At rate r = ratio * r0 the layer convolves on an FFT grid of n points, bin j at j * r / n Hz. There it applies the
training-rate response (the DTFT of the training-rate kernel, taps at lags in 1/r0 s) below min(r, r0) / 2 and
nothing at or above it:

    K_r[j] = H0(j * ratio / n)   if j * r / n < min(r, r0) / 2,  else 0,     H0(nu) = sum_t k0[t] exp(-2 pi i nu t)

Below the training rate this drops what the slower rate cannot carry (for a Fourier sub-kernel, the response at its
mode frequencies is its modes, and modes at or above the new Nyquist frequency vanish: the paper's mode truncation).
Above it, it is exact band-limited interpolation: a sinusoid in Hz sees the same gain and phase at every rate, and
nothing the model never saw in training (above r0 / 2) passes. H0 is evaluated exactly on the grid with the chirp-z
transform (Bluestein), O((taps + bins) log) per channel, so it holds for any kernel, not only Fourier ones.
"""
from __future__ import annotations

import math

import torch

from .fftconv import fast_fft_size


def dtft(x: torch.Tensor, step: float, count: int) -> torch.Tensor:
    """X[..., j] = sum_t x[..., t] exp(-2 pi i step j t) for j < count (chirp-z transform): x (..., N) -> (..., count).

    Bluestein's identity j t = (j^2 + t^2 - (j - t)^2) / 2 turns the sum into a convolution with a chirp, done with
    FFTs. Computed in complex128 whatever x's dtype: chirp phases grow as t^2.
    """
    taps = x.shape[-1]
    size = fast_fft_size(taps + count - 1)
    m = torch.arange(max(taps, count), dtype=torch.float64, device=x.device)
    cycles = torch.remainder(0.5 * step * m * m, 1.0)  # reduce before scaling by 2 pi: keeps the phase exact
    chirp = torch.polar(torch.ones_like(cycles), -2 * math.pi * cycles)  # exp(-i pi step m^2)
    spread = torch.zeros(size, dtype=torch.complex128, device=x.device)  # conj(chirp) at lags -(N-1) .. count-1
    spread[:count] = chirp[:count].conj()
    if taps > 1:
        spread[size - taps + 1:] = chirp[1:taps].conj().flip(0)
    weighted = x.to(torch.float64) * chirp[:taps]
    conv = torch.fft.ifft(torch.fft.fft(weighted, n=size) * torch.fft.fft(spread), n=size)
    return conv[..., :count] * chirp[:count]


def taps_at(length: int, rate_ratio: float, directions: int = 1) -> int:
    """Taps a sub-kernel of `length` training-rate samples spans at `rate_ratio` x the training rate.

    Causal taps cover lags [0, length) training samples, anti-causal ones lags [1, length + 1). At another rate the
    band-limited kernel is longer than that (it rings), and the FFT grid (n >= input + taps) wraps what rings on.
    """
    if rate_ratio == 1:
        return length
    causal = math.ceil(length * rate_ratio - 1e-9)
    if directions == 1:
        return causal
    return max(causal, math.ceil((length + 1) * rate_ratio - 1e-9) - 1)


def passband_bins(n: int, rate_ratio: float) -> int:
    """How many bins j >= 0 of an n-point FFT at rate_ratio * r0 lie below min(r, r0) / 2: j < n / (2 max(1, ratio))."""
    edge = n / (2 * max(1.0, rate_ratio))
    if abs(edge - round(edge)) < 1e-9:  # an exact edge bin is not below it
        edge = round(edge)
    return min(math.ceil(edge), n // 2 + 1)


def passband(n: int, rate_ratio: float, device=None) -> torch.Tensor:
    """1 on the bins of an n-point rfft at rate_ratio below min(r, r0) / 2, 0 elsewhere: (n//2+1,) float64."""
    mask = torch.zeros(n // 2 + 1, dtype=torch.float64, device=device)
    mask[: passband_bins(n, rate_ratio)] = 1
    return mask


def response_at_rate(
    k: torch.Tensor, rate_ratio: float, n: int, skip: torch.Tensor | None = None
) -> torch.Tensor:
    """The training-rate kernel k (directions, H, taps) as an n-point rfft spectrum at rate_ratio: (H, n//2+1) complex128.

    Layout of k as in fftconv.py: direction 0 causal (tap s at lag s), direction 1 anti-causal (tap s at lag -(s+1)).
    `skip` (H,): a pass-through gain (the layer's D) added to the response, band-limited with it.
    """
    bins = passband_bins(n, rate_ratio)
    step = rate_ratio / n  # bin j in cycles per training-rate sample
    response = dtft(k[0], step, bins)
    if k.shape[0] == 2:  # sum_s k1[s] exp(+2 pi i nu (s+1)) = exp(2 pi i nu) conj(DTFT(k1)(nu)) for real k1
        nu = torch.arange(bins, dtype=torch.float64, device=k.device) * step
        response = response + torch.polar(torch.ones_like(nu), 2 * math.pi * nu) * dtft(k[1], step, bins).conj()
    if skip is not None:
        response = response + skip.to(torch.float64)[:, None]
    full = response.new_zeros(k.shape[1], n // 2 + 1)
    full[:, :bins] = response
    return full
