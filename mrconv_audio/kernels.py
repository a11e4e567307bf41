"""Sub-kernel parameterizations (paper section 3.3). Each module makes one branch's kernel.

A kernel module is called with `rate_ratio` = (input sample rate) / (training sample rate) and returns
k: (directions, channels, taps), directions = 2 when bidirectional (see fftconv.py for the layout).

Only the Fourier kernel is a continuous function of time, so only it can be evaluated at another rate;
dilated and sparse kernels raise `ContinuousKernelError` when asked to.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# Parameters with these names are kernel parameters: own learning rate, no weight decay (paper D.1.1).
KERNEL_PARAMETER_NAMES = ("modes", "taps")

KERNEL_TYPES = ("fourier", "dilated", "sparse", "fourier_sparse")


class ContinuousKernelError(ValueError):
    """A kernel that is not a continuous function of time was asked for another sample rate."""


def _require_training_rate(kind: str, rate_ratio: float) -> None:
    if rate_ratio != 1:
        raise ContinuousKernelError(
            f"{kind} kernels are not continuous and cannot run at {rate_ratio:g}x the training sample rate; "
            "only Fourier kernels can be resampled (resample the audio instead, or use kernel='fourier')"
        )


def taps_at(length: int, rate_ratio: float, directions: int = 1) -> int:
    """Taps a sub-kernel of `length` training-rate samples spans at `rate_ratio` x the training rate.

    Causal taps cover lags [0, length) training samples; anti-causal ones lags [1, length + 1) (see FourierKernel).
    """
    if rate_ratio == 1:
        return length
    causal = math.ceil(length * rate_ratio - 1e-9)
    if directions == 1:
        return causal
    return max(causal, math.ceil((length + 1) * rate_ratio - 1e-9) - 1)


class FourierKernel(nn.Module):
    """n_modes complex low-frequency modes, kernel = irfft of the zero-padded modes (eq. 15).

    The modes define a band-limited periodic function over the branch's duration T = length / r0:
        f(x) = (1/length) [Re c_0 + 2 sum_k Re(c_k exp(2 pi i k x / length))],  x = time * r0 (in training samples)
    At the training rate the taps are f(0), f(1), ... (exactly torch.fft.irfft). At rate r = ratio * r0 the taps are
    f sampled every 1/ratio training samples, scaled by 1/ratio so a sinusoid in Hz sees the same gain, with the
    modes at or above the new Nyquist frequency dropped.
    """

    def __init__(self, channels: int, length: int, n_modes: int, directions: int = 1):
        super().__init__()
        if not 1 <= n_modes <= length // 2:
            raise ValueError(f"n_modes must be in [1, {length // 2}] for a kernel of {length} taps, got {n_modes}")
        self.length, self.n_modes, self.directions = length, n_modes, directions
        # The kernel has unit L2 norm in expectation: sum_t k[t]^2 ~ 2 * n_modes * scale^2 / length (Parseval).
        # The modes are stored at unit scale and `scale` applied in forward: stored at their full size (which grows
        # as sqrt(length)) Adam's size-independent steps would barely move the long sub-kernels.
        self.scale = math.sqrt(length / (2 * n_modes * directions))
        self.modes = nn.Parameter(torch.randn(directions, channels, n_modes, 2) / math.sqrt(2))

    def forward(self, rate_ratio: float = 1.0) -> torch.Tensor:
        modes = torch.view_as_complex(self.modes) * self.scale  # (D, H, n_modes)
        if rate_ratio == 1:
            return torch.fft.irfft(modes, n=self.length)  # zero-pads the missing modes
        return self._resampled(modes, float(rate_ratio))

    def _resampled(self, modes: torch.Tensor, ratio: float) -> torch.Tensor:
        length = self.length
        kept = min(self.n_modes, math.ceil(length * ratio / 2))  # keep mode k only while 2k < length * ratio
        taps = taps_at(length, ratio, self.directions)
        steps = torch.arange(taps, dtype=torch.float64, device=modes.device)
        # Positions in training samples: causal tap s at lag s/ratio, anti-causal tap s at lag (s+1)/ratio,
        # which is index (s+1)/ratio - 1 of the anti-causal series (its tap 0 sits at lag 1 training sample).
        positions = [steps / ratio, (steps + 1) / ratio - 1][: self.directions]
        positions = torch.stack(positions)  # (D, taps)
        k = torch.arange(kept, dtype=torch.float64, device=modes.device)
        phase = 2 * math.pi * positions[:, :, None] * k / length  # (D, taps, kept)
        weight = torch.full((kept,), 2.0, dtype=torch.float64, device=modes.device)
        weight[0] = 1.0
        c = modes[..., :kept].to(torch.complex128) * weight  # (D, H, kept)
        values = torch.einsum("dtk,dhk->dht", torch.cos(phase), c.real) - torch.einsum(
            "dtk,dhk->dht", torch.sin(phase), c.imag
        )
        values = values / (length * ratio)
        # Outside the branch's support [0, length): anti-causal taps closer than one training sample to lag 0, and the
        # anti-causal series' end, which comes one tap early.
        values = values * ((positions >= 0) & (positions < length))[:, None, :]
        return values.to(self.modes.dtype)


class DilatedKernel(nn.Module):
    """l0 taps spaced `dilation` apart (eq. 14); resolution i uses dilation 2^i."""

    def __init__(self, channels: int, length: int, l0: int, dilation: int, directions: int = 1):
        super().__init__()
        self.length, self.dilation, self.directions = length, dilation, directions
        self.n_taps = min(l0, (length - 1) // dilation + 1)  # taps that fall inside the branch length
        self.taps = nn.Parameter(torch.randn(directions, channels, self.n_taps) / math.sqrt(self.n_taps * directions))

    def forward(self, rate_ratio: float = 1.0) -> torch.Tensor:
        _require_training_rate("dilated", rate_ratio)
        directions, channels, n_taps = self.taps.shape
        k = self.taps.new_zeros(directions, channels, (n_taps - 1) * self.dilation + 1)
        k[..., :: self.dilation] = self.taps
        return k


class SparseKernel(nn.Module):
    """l0 taps at positions drawn once at random over the branch length (eq. 16), kept in the state dict."""

    def __init__(self, channels: int, length: int, l0: int, seed: int, directions: int = 1):
        super().__init__()
        self.length = length
        n_taps = min(l0, length)
        generator = torch.Generator().manual_seed(seed)
        positions = torch.stack(
            [torch.randperm(length, generator=generator)[:n_taps].sort().values for _ in range(directions)]
        )
        self.register_buffer("positions", positions)  # (D, n_taps), int64
        self.taps = nn.Parameter(torch.randn(directions, channels, n_taps) / math.sqrt(n_taps * directions))

    def forward(self, rate_ratio: float = 1.0) -> torch.Tensor:
        _require_training_rate("sparse", rate_ratio)
        directions, channels, _ = self.taps.shape
        taps = int(self.positions.max()) + 1
        index = self.positions[:, None, :].expand(-1, channels, -1)
        return self.taps.new_zeros(directions, channels, taps).scatter(-1, index, self.taps)


class FourierSparseKernel(nn.Module):
    """A Fourier and a sparse kernel in one branch, combined by learnable linear rescaling (eq. 9)."""

    def __init__(self, channels: int, length: int, l0: int, n_modes: int, seed: int, directions: int = 1):
        super().__init__()
        self.fourier = FourierKernel(channels, length, n_modes, directions)
        self.sparse = SparseKernel(channels, length, l0, seed, directions)
        self.scale = nn.Parameter(torch.full((2, channels, 1), 1 / math.sqrt(2)))

    def forward(self, rate_ratio: float = 1.0) -> torch.Tensor:
        _require_training_rate("fourier_sparse", rate_ratio)
        fourier, sparse = self.fourier(), self.sparse()
        k = self.scale[0] * fourier
        return k.index_add(-1, torch.arange(sparse.shape[-1], device=k.device), self.scale[1] * sparse)


def make_kernel(
    kind: str, channels: int, length: int, resolution: int, l0: int, n_modes: int, directions: int, seed: int
) -> nn.Module:
    """The sub-kernel of branch `resolution` (0 = shortest), `length` taps long at the training rate."""
    if kind == "fourier":
        return FourierKernel(channels, length, n_modes, directions)
    if kind == "dilated":
        return DilatedKernel(channels, length, l0, 2**resolution, directions)
    if kind == "sparse":
        return SparseKernel(channels, length, l0, seed + resolution, directions)
    if kind == "fourier_sparse":
        return FourierSparseKernel(channels, length, l0, n_modes, seed + resolution, directions)
    raise ValueError(f"unknown kernel type {kind!r}; expected one of {KERNEL_TYPES}")
