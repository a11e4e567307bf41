"""The multi-resolution convolution layer (paper eq. 10-13) and its structural reparameterization (eq. 18).

Branch form (training, norm="batchnorm"):
    y = sum_i alpha_i * BN_i(k_i * u) + D * u             N convolutions sharing one input FFT
Merged form (after `reparameterize()`, or norm="rescale" at any time):
    y = (sum_i gain_i * k_i) * u + bias + D * u            one convolution
with gain_i = alpha_i * gamma_i / sqrt(var_i + eps) and bias = sum_i alpha_i (beta_i - mean_i * gamma_i / sqrt(var_i + eps)).

The merged form keeps each branch's (small) kernel parameters and the merged per-branch gains rather than the
merged kernel's samples: 16,000 samples x channels per layer would be 100x larger on disk, and the sub-kernels are
what lets the merged model run at another sample rate. The merged kernel's spectrum is cached per (rate, length).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .fftconv import fft_conv, fft_size, kernel_spectrum
from .kernels import make_kernel, taps_at

NORMS = ("batchnorm", "rescale")


def branch_lengths(max_len: int, l0: int) -> list[int]:
    """l_i = min(l0 * 2^i, L) for i < N = ceil(log2(L / l0)) + 1, e.g. L=16000, l0=32 -> 10 branches."""
    if not 1 <= l0 <= max_len:
        raise ValueError(f"l0 must be in [1, max_len={max_len}], got {l0}")
    n_branches = math.ceil(math.log2(max_len / l0)) + 1
    return [min(l0 * 2**i, max_len) for i in range(n_branches)]


class MRConv(nn.Module):
    """Depthwise multi-resolution global convolution. u: (batch, channels, time) -> same shape."""

    def __init__(
        self,
        channels: int,
        max_len: int,
        l0: int = 32,
        kernel: str = "fourier",
        n_modes: int = 16,
        bidirectional: bool = True,
        norm: str = "batchnorm",
        seed: int = 0,
    ):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
        self.channels, self.max_len, self.norm, self.directions = channels, max_len, norm, 2 if bidirectional else 1
        self.lengths = branch_lengths(max_len, l0)
        directions = 2 if bidirectional else 1
        self.kernels = nn.ModuleList(
            make_kernel(kernel, channels, length, i, l0, n_modes, directions, seed)
            for i, length in enumerate(self.lengths)
        )
        n = len(self.lengths)
        self.norms = nn.ModuleList(nn.BatchNorm1d(channels) for _ in range(n)) if norm == "batchnorm" else None
        self.alpha = nn.Parameter(torch.full((n, channels), 1 / math.sqrt(n)))
        self.D = nn.Parameter(torch.randn(channels))
        self.merged = False
        self._spectrum_cache: dict[tuple, torch.Tensor] = {}

    # ---- forward -----------------------------------------------------------------------------------------
    def forward(self, u: torch.Tensor, rate_ratio: float = 1.0) -> torch.Tensor:
        if torch.is_autocast_enabled(u.device.type):  # mixed precision: the FFTs stay in float32
            with torch.autocast(u.device.type, enabled=False):
                return self._forward(u.float(), rate_ratio)
        return self._forward(u, rate_ratio)

    def _forward(self, u: torch.Tensor, rate_ratio: float) -> torch.Tensor:
        batch, channels, length = u.shape
        if self.merged and self.training:
            raise RuntimeError("this MRConv layer was reparameterized for inference; it cannot be trained")
        taps = min(taps_at(self.max_len, rate_ratio, self.directions), length)
        n = fft_size(length, taps)
        u_f = torch.fft.rfft(u, n=n)  # (B, H, n//2+1), shared by every branch
        if self.norms is not None:  # branch form (reparameterize() removes the norms)
            y = self.D[:, None] * u
            for i, (kernel, norm) in enumerate(zip(self.kernels, self.norms)):
                k = kernel(rate_ratio)[..., :length]
                c = fft_conv(u_f, kernel_spectrum(k, n), n, length)
                y = y + self.alpha[i, :, None] * norm(c)
            return y
        k_f = self._merged_spectrum(rate_ratio, length, n)
        if torch.is_grad_enabled() and (u.requires_grad or k_f.requires_grad):
            y = fft_conv(u_f, k_f, n, length) + self.D[:, None] * u
            return y + self.bias[:, None] if self.merged else y
        # Inference: work in the spectrum's and the output's own buffers; large allocations are slow on CPU.
        y = torch.fft.irfft(u_f.mul_(k_f), n=n)[..., :length]
        y.addcmul_(u, self.D[:, None])
        if self.merged:
            y.add_(self.bias[:, None])
        return y

    def merged_kernel(self, rate_ratio: float = 1.0, taps: int | None = None) -> torch.Tensor:
        """sum_i gain_i * zero-pad(k_i): (directions, channels, taps). gain = alpha until reparameterized."""
        gains = self.gain if self.merged else self.alpha
        taps = taps or taps_at(self.max_len, rate_ratio, self.directions)
        merged = None
        for gain, kernel in zip(gains, self.kernels):
            k = kernel(rate_ratio)[..., :taps] * gain[:, None]
            if merged is None:
                merged = k.new_zeros(k.shape[0], self.channels, taps)
            merged[..., : k.shape[-1]] += k
        return merged

    def _merged_spectrum(self, rate_ratio: float, length: int, n: int) -> torch.Tensor:
        taps = min(taps_at(self.max_len, rate_ratio, self.directions), length)
        if not self.merged:  # rescale-mode training: parameters change every step, nothing to cache
            return kernel_spectrum(self.merged_kernel(rate_ratio, taps), n)
        key = (float(rate_ratio), length, self.D.device, self.D.dtype)
        if key not in self._spectrum_cache:
            with torch.no_grad():
                self._spectrum_cache[key] = kernel_spectrum(self.merged_kernel(rate_ratio, taps), n)
        return self._spectrum_cache[key]

    # ---- reparameterization ------------------------------------------------------------------------------
    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold each branch's BatchNorm (eq. 18) and alpha into per-branch gains and one bias (eq. 13)."""
        if self.merged:
            return
        gain = self.alpha.detach().clone()
        bias = torch.zeros_like(self.D)
        if self.norms is not None:
            for i, norm in enumerate(self.norms):
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                gain[i] *= scale
                bias += self.alpha[i] * (norm.bias - norm.running_mean * scale)
        del self.alpha
        self.norms = None
        self.register_buffer("gain", gain)
        self.register_buffer("bias", bias)
        self.merged = True
        self._spectrum_cache.clear()

    def _apply(self, fn, recurse=True):
        self._spectrum_cache.clear()  # .to() / .double(): cached spectra belong to the old device or dtype
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, lengths={self.lengths}, norm={self.norm}, merged={self.merged}"
