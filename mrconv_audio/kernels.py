"""Sub-kernel parameterizations (paper section 3.3). Each module makes one branch's kernel.

A kernel module returns its taps at the training rate, k: (directions, channels, taps), directions = 2 when
bidirectional (see fftconv.py for the layout). At another rate the layer applies the band-limited response of those
taps (anyrate.py). Only the Fourier kernel is a continuous, band-limited function of time (`continuous = True`), so
only it is allowed there: the paper finds that dilated and sparse kernels degrade across rates, and this project has
not measured them, so they raise `ContinuousKernelError`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

# Parameters with these names are kernel parameters: own learning rate, no weight decay (paper D.1.1).
KERNEL_PARAMETER_NAMES = ("modes", "taps")

KERNEL_TYPES = ("fourier", "dilated", "sparse", "fourier_sparse")


class ContinuousKernelError(ValueError):
    """A kernel that is not a continuous function of time was asked for another sample rate."""


def require_continuous(kernel: nn.Module, rate_ratio: float) -> None:
    """Refuse another rate for kernels that are not a continuous function of time (see anyrate.py)."""
    if rate_ratio != 1 and not getattr(kernel, "continuous", False):
        raise ContinuousKernelError(
            f"{type(kernel).__name__} is not continuous and cannot run at {rate_ratio:g}x the training sample rate; "
            "only Fourier kernels can be evaluated at another rate (resample the audio instead, or use "
            "kernel='fourier')"
        )


class FourierKernel(nn.Module):
    """n_modes complex low-frequency modes, kernel = irfft of the zero-padded modes (eq. 15).

    The modes define a band-limited periodic function over the branch's duration T = length / r0:
        f(x) = (1/length) [Re c_0 + 2 sum_k Re(c_k exp(2 pi i k x / length))],  x = time * r0 (in training samples)
    The taps are f(0), f(1), ... (exactly torch.fft.irfft). The DTFT of these taps at the mode frequencies k / length
    is c_k: dropping the response at and above a lower rate's Nyquist frequency (anyrate.py) truncates the modes.
    """

    continuous = True

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

    def forward(self) -> torch.Tensor:
        modes = torch.view_as_complex(self.modes) * self.scale  # (D, H, n_modes)
        return torch.fft.irfft(modes, n=self.length)  # zero-pads the missing modes


class DilatedKernel(nn.Module):
    """l0 taps spaced `dilation` apart (eq. 14); resolution i uses dilation 2^i."""

    def __init__(self, channels: int, length: int, l0: int, dilation: int, directions: int = 1):
        super().__init__()
        self.length, self.dilation, self.directions = length, dilation, directions
        self.n_taps = min(l0, (length - 1) // dilation + 1)  # taps that fall inside the branch length
        self.taps = nn.Parameter(torch.randn(directions, channels, self.n_taps) / math.sqrt(self.n_taps * directions))

    def forward(self) -> torch.Tensor:
        directions, channels, n_taps = self.taps.shape
        k = self.taps.new_zeros(directions, channels, (n_taps - 1) * self.dilation + 1)
        k[..., :: self.dilation] = self.taps
        return k


class SparseKernel(nn.Module):
    """l0 taps at positions drawn once at random over the branch length (eq. 16), kept in the state dict.

    `seed` is an int or a sequence of ints (e.g. model seed, layer, branch), mixed into one generator seed.
    """

    def __init__(self, channels: int, length: int, l0: int, seed, directions: int = 1):
        super().__init__()
        self.length = length
        n_taps = min(l0, length)
        mixed = np.random.SeedSequence(seed).generate_state(1, dtype=np.uint64)[0]
        generator = torch.Generator().manual_seed(int(mixed))
        positions = torch.stack(
            [torch.randperm(length, generator=generator)[:n_taps].sort().values for _ in range(directions)]
        )
        self.register_buffer("positions", positions)  # (D, n_taps), int64
        self.taps = nn.Parameter(torch.randn(directions, channels, n_taps) / math.sqrt(n_taps * directions))

    def forward(self) -> torch.Tensor:
        directions, channels, _ = self.taps.shape
        taps = int(self.positions.max()) + 1
        index = self.positions[:, None, :].expand(-1, channels, -1)
        return self.taps.new_zeros(directions, channels, taps).scatter(-1, index, self.taps)


class FourierSparseKernel(nn.Module):
    """A Fourier and a sparse kernel in one branch, combined by learnable linear rescaling (eq. 9)."""

    def __init__(self, channels: int, length: int, l0: int, n_modes: int, seed, directions: int = 1):
        super().__init__()
        self.fourier = FourierKernel(channels, length, n_modes, directions)
        self.sparse = SparseKernel(channels, length, l0, seed, directions)
        self.scale = nn.Parameter(torch.full((2, channels, 1), 1 / math.sqrt(2)))

    def forward(self) -> torch.Tensor:
        fourier, sparse = self.fourier(), self.sparse()
        k = self.scale[0] * fourier
        return k.index_add(-1, torch.arange(sparse.shape[-1], device=k.device), self.scale[1] * sparse)


def make_kernel(
    kind: str, channels: int, length: int, resolution: int, l0: int, n_modes: int, directions: int, seed=0
) -> nn.Module:
    """The sub-kernel of branch `resolution` (0 = shortest), `length` taps long at the training rate.

    `seed` (an int or a tuple such as (model seed, layer)) places sparse taps; the branch index is mixed in.
    """
    seed = (*(seed if isinstance(seed, tuple) else (seed,)), resolution)
    if kind == "fourier":
        return FourierKernel(channels, length, n_modes, directions)
    if kind == "dilated":
        return DilatedKernel(channels, length, l0, 2**resolution, directions)
    if kind == "sparse":
        return SparseKernel(channels, length, l0, seed, directions)
    if kind == "fourier_sparse":
        return FourierSparseKernel(channels, length, l0, n_modes, seed, directions)
    raise ValueError(f"unknown kernel type {kind!r}; expected one of {KERNEL_TYPES}")
