"""The multi-resolution convolution layer (paper eq. 10-13) and its structural reparameterization (eq. 18).

Branch form (training, norm="batchnorm"):
    y = sum_i alpha_i * BN_i(k_i * u) + D * u             N convolutions sharing one input FFT
Merged form (after `reparameterize()`, or norm="rescale" at any time):
    y = (sum_i gain_i * k_i) * u + bias + D * u            one convolution
with gain_i = alpha_i * gamma_i / sqrt(var_i + eps) and bias = sum_i alpha_i (beta_i - mean_i * gamma_i / sqrt(var_i + eps)).

The merged form keeps each branch's (small) kernel parameters and the merged per-branch gains rather than the
merged kernel's samples: 16,000 samples x channels per layer would be 100x larger on disk, and the sub-kernels are
what lets the merged model run at another sample rate. The merged kernel's spectrum is cached per (rate, length),
stamped with the weights' versions so that a weight changed in place (load_state_dict) is never served stale.
At another sample rate the layer applies its training-rate response, band-limited (anyrate.py).
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict

import torch
from torch import nn

from .anyrate import passband, response_at_rate, taps_at
from .fftconv import fft_conv, fft_size, kernel_spectrum
from .kernels import make_kernel, require_continuous

NORMS = ("batchnorm", "rescale")
# Merged-kernel spectra kept per layer (least recently used go first). The paper model's layer holds one 48 kHz
# spectrum (49 MB) or ten 16 kHz ones; the shipped log-mel model's spectra are 65 KB.
SPECTRUM_CACHE_BYTES = 128 * 2**20


class SpectrumCache:
    """Spectra by key, each stamped with the weights it was computed from; thread-safe and bounded in bytes.

    A lookup whose stamp differs from the stored one recomputes (the weights changed in place). Several threads
    may compute the same missing entry at once; each gets a correct spectrum and the last one is kept.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, tuple[tuple, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, stamp: tuple, compute) -> torch.Tensor:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == stamp:
                self._entries.move_to_end(key)
                return entry[1]
        value = compute()  # outside the lock: a slow spectrum must not block other rates
        with self._lock:
            self._entries[key] = (stamp, value)
            self._entries.move_to_end(key)
            while len(self._entries) > 1 and self.nbytes() > self.max_bytes:
                self._entries.popitem(last=False)
        return value

    def nbytes(self) -> int:
        return sum(value.numel() * value.element_size() for _, value in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


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
        seed: int | tuple = 0,  # sparse tap positions: (model seed, layer index) in a model
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
        self._spectrum_cache = SpectrumCache(SPECTRUM_CACHE_BYTES)

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
        for kernel in self.kernels:
            require_continuous(kernel, rate_ratio)
        n = self.fft_length(length, rate_ratio)
        u_f = torch.fft.rfft(u, n=n)  # (B, H, n//2+1), shared by every branch
        if self.norms is not None:  # branch form (reparameterize() removes the norms)
            if rate_ratio == 1:
                y = self.D[:, None] * u
                spectra = (kernel_spectrum(kernel()[..., :length], n) for kernel in self.kernels)
            else:  # anyrate.py: the D skip too stops at the training rate's Nyquist frequency
                y = fft_conv(u_f, self.D[:, None] * passband(n, rate_ratio, u.device).to(u.dtype), n, length)
                span = self._training_span(length, rate_ratio)
                spectra = (response_at_rate(kernel()[..., :span], rate_ratio, n).to(u_f.dtype) for kernel in self.kernels)
            for i, (spectrum, norm) in enumerate(zip(spectra, self.norms)):
                y = y + self.alpha[i, :, None] * norm(fft_conv(u_f, spectrum, n, length))
            return y
        k_f = self._merged_spectrum(rate_ratio, length, n)
        skip = rate_ratio == 1  # elsewhere D is inside k_f, band-limited with the kernel
        if torch.is_grad_enabled() and (u.requires_grad or k_f.requires_grad):
            y = fft_conv(u_f, k_f, n, length)
            y = y + self.D[:, None] * u if skip else y
            return y + self.bias[:, None] if self.merged else y
        # Inference: work in the spectrum's and the output's own buffers; large allocations are slow on CPU.
        y = torch.fft.irfft(u_f.mul_(k_f), n=n)[..., :length]
        if skip:
            y.addcmul_(u, self.D[:, None])
        if self.merged:
            y.add_(self.bias[:, None])
        return y

    def fft_length(self, length: int, rate_ratio: float = 1.0) -> int:
        """The FFT grid (n points) the layer convolves an input of `length` samples at `rate_ratio` on."""
        return fft_size(length, min(taps_at(self.max_len, rate_ratio, self.directions), length))

    def _training_span(self, length: int, rate_ratio: float) -> int:
        """Training-rate taps that reach across an input of `length` samples at rate_ratio: the kernel is cut there,
        as it is at the training rate (the kernel's far taps would wrap around the FFT grid otherwise)."""
        return min(self.max_len, math.floor((length - 1) / rate_ratio + 1e-9) + 1)

    def merged_kernel(self, taps: int | None = None) -> torch.Tensor:
        """Training-rate sum_i gain_i * zero-pad(k_i): (directions, channels, taps). gain = alpha until merged."""
        gains = self.gain if self.merged else self.alpha
        taps = taps or self.max_len
        merged = None
        for gain, kernel in zip(gains, self.kernels):
            k = kernel()[..., :taps] * gain[:, None]
            if merged is None:
                merged = k.new_zeros(k.shape[0], self.channels, taps)
            merged[..., : k.shape[-1]] += k
        return merged

    def frequency_response(self, length: int, rate_ratio: float = 1.0) -> tuple[int, torch.Tensor]:
        """(n, K): on an input of `length` samples at rate_ratio, the merged layer computes
        y = irfft(rfft(u, n) * K, n)[:length] + bias. K: (channels, n//2+1), the D skip included."""
        n = self.fft_length(length, rate_ratio)
        with torch.no_grad():
            k_f = self._compute_spectrum(rate_ratio, length, n)
            return n, k_f + self.D[:, None] if rate_ratio == 1 else k_f

    def _compute_spectrum(self, rate_ratio: float, length: int, n: int) -> torch.Tensor:
        if rate_ratio == 1:
            return kernel_spectrum(self.merged_kernel(min(self.max_len, length)), n)
        k = self.merged_kernel(self._training_span(length, rate_ratio))
        complex_dtype = torch.complex64 if self.D.dtype != torch.float64 else torch.complex128
        return response_at_rate(k, rate_ratio, n, skip=self.D).to(complex_dtype)

    def _merged_spectrum(self, rate_ratio: float, length: int, n: int) -> torch.Tensor:
        if not self.merged:  # rescale-mode training: parameters change every step, nothing to cache
            return self._compute_spectrum(rate_ratio, length, n)
        key = (float(rate_ratio), length, self.D.device, self.D.dtype)
        return self._spectrum_cache.get(key, self._weights_stamp(), lambda: self._compute_spectrum(rate_ratio, length, n))

    def _weights_stamp(self) -> tuple:
        """Changes whenever a weight does: in place (version counter: load_state_dict, optimizers) or replaced."""
        return tuple((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers()))

    # ---- reparameterization ------------------------------------------------------------------------------
    @torch.no_grad()
    def reparameterize(self) -> "MRConv":
        """Fold each branch's BatchNorm (eq. 18) and alpha into per-branch gains and one bias (eq. 13)."""
        if self.merged:
            return self
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
        return self

    def _apply(self, fn, recurse=True):
        before = (self.D.device, self.D.dtype)
        module = super()._apply(fn, recurse)
        if (self.D.device, self.D.dtype) != before:  # spectra of the old device or dtype would only hold memory
            self._spectrum_cache.clear()
        return module

    def extra_repr(self) -> str:
        return f"channels={self.channels}, lengths={self.lengths}, norm={self.norm}, merged={self.merged}"
