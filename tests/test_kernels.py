import math

import numpy as np
import pytest
import torch

from mrconv_audio.kernels import (
    ContinuousKernelError,
    DilatedKernel,
    FourierKernel,
    FourierSparseKernel,
    SparseKernel,
    make_kernel,
    require_continuous,
)


def fourier_series(modes: np.ndarray, length: int, x: np.ndarray) -> np.ndarray:
    """Independent evaluation of f(x) = (1/L)[Re c0 + 2 sum_k Re(c_k e^{2 pi i k x / L})]: modes (H, m) -> (H, len(x))."""
    k = np.arange(modes.shape[-1])
    terms = modes[:, :, None] * np.exp(2j * np.pi * k[:, None] * x[None, :] / length)  # (H, m, X)
    terms[:, 0, :] = modes[:, 0, None].real
    terms[:, 1:, :] *= 2
    return terms.real.sum(1) / length


def test_fourier_kernel_is_irfft_of_zero_padded_modes():
    kernel = FourierKernel(channels=3, length=64, n_modes=5, directions=2).double()
    modes = torch.view_as_complex(kernel.modes) * kernel.scale
    padded = torch.zeros(2, 3, 33, dtype=torch.complex128)
    padded[..., :5] = modes
    torch.testing.assert_close(kernel(), torch.fft.irfft(padded, n=64), rtol=0, atol=1e-15)
    # Low rank: longer kernels share the same number of parameters.
    assert FourierKernel(3, 1024, 5).modes.numel() == FourierKernel(3, 32, 5).modes.numel()


def test_fourier_kernel_at_training_rate_samples_the_series():
    kernel = FourierKernel(channels=2, length=32, n_modes=8).double()
    modes = (torch.view_as_complex(kernel.modes) * kernel.scale)[0].detach().numpy()
    np.testing.assert_allclose(kernel()[0].detach().numpy(), fourier_series(modes, 32, np.arange(32.0)), atol=1e-14)


def test_dilated_kernel_spaces_taps_by_its_dilation():
    kernel = DilatedKernel(channels=2, length=128, l0=8, dilation=4)
    k = kernel()
    assert k.shape == (1, 2, 29)  # (8 - 1) * 4 + 1
    torch.testing.assert_close(k[..., ::4], kernel.taps)
    mask = torch.ones(29, dtype=torch.bool)
    mask[::4] = False
    assert torch.all(k[..., mask] == 0)


def test_dilated_kernel_clips_taps_to_the_branch_length():
    kernel = DilatedKernel(channels=1, length=100, l0=32, dilation=4)  # 32 taps * 4 would reach 125
    assert kernel().shape[-1] <= 100


def test_sparse_kernel_positions_are_seeded_and_stored():
    a, b = SparseKernel(2, 1000, 16, seed=3), SparseKernel(2, 1000, 16, seed=3)
    assert torch.equal(a.positions, b.positions)
    assert not torch.equal(a.positions, SparseKernel(2, 1000, 16, seed=4).positions)
    assert "positions" in a.state_dict()
    k = a()
    nonzero = (k[0] != 0).any(0).nonzero().flatten()
    assert set(nonzero.tolist()) <= set(a.positions[0].tolist())
    torch.testing.assert_close(k[0][:, a.positions[0]], a.taps[0])


def test_fourier_sparse_is_linear_rescaling_of_both():
    kernel = FourierSparseKernel(2, 256, l0=16, n_modes=8, seed=0)
    f, s = kernel.fourier(), kernel.sparse()
    expected = kernel.scale[0] * f
    expected[..., : s.shape[-1]] += kernel.scale[1] * s
    torch.testing.assert_close(kernel(), expected)


@pytest.mark.parametrize("kind", ["dilated", "sparse", "fourier_sparse"])
def test_non_continuous_kernels_refuse_another_rate(kind):
    kernel = make_kernel(kind, 2, 64, 1, 32, 16, 1, 0)
    require_continuous(kernel, 1.0)  # the training rate is fine
    with pytest.raises(ContinuousKernelError, match="not continuous"):
        require_continuous(kernel, 0.5)
    require_continuous(make_kernel("fourier", 2, 64, 1, 32, 16, 1, 0), 0.5)


def test_sparse_positions_differ_between_layers_and_branches():
    """The seed mixes in the layer index: the same model seed must not give every layer the same taps."""
    positions = {
        (layer, branch): make_kernel("sparse", 2, 1000, branch, 16, 8, 1, seed=(0, layer)).positions
        for layer in range(3) for branch in range(2)
    }
    for a in positions:
        for b in positions:
            if a != b:
                assert not torch.equal(positions[a], positions[b]), (a, b)
    again = make_kernel("sparse", 2, 1000, 1, 16, 8, 1, seed=(0, 2)).positions
    assert torch.equal(again, positions[2, 1])  # and stays reproducible


def test_bad_kernel_arguments_are_named():
    with pytest.raises(ValueError, match="n_modes"):
        FourierKernel(2, 32, 17)
    with pytest.raises(ValueError, match="unknown kernel type 'wavelet'"):
        make_kernel("wavelet", 2, 64, 0, 32, 16, 1, 0)


def test_fourier_modes_are_stored_at_unit_scale_whatever_the_length():
    for length in (32, 1024, 16000):
        kernel = FourierKernel(channels=64, length=length, n_modes=16, directions=2)
        assert abs(kernel.modes.std().item() - 1 / math.sqrt(2)) < 0.05  # unit complex variance
        energy = kernel().square().sum((0, 2)).mean().item()  # the kernel (both halves) keeps unit norm on average
        assert 0.7 < energy < 1.3


def test_adam_moves_every_branch_kernel_by_a_comparable_fraction():
    """With modes stored at their full size (growing as sqrt(length)), Adam's size-independent steps moved the
    long sub-kernels 16x less than the short ones here (25-38% vs 1% in the first shipped model)."""
    from mrconv_audio.mrconv import MRConv

    torch.manual_seed(0)
    layer = MRConv(channels=8, max_len=4096, l0=16, n_modes=8, norm="rescale")
    before = [k().detach().clone() for k in layer.kernels]
    optimizer = torch.optim.Adam([k.modes for k in layer.kernels], lr=1e-3)
    u, target = torch.randn(4, 8, 4096), torch.randn(4, 8, 4096)
    for _ in range(20):
        loss = (layer(u) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = [((k().detach() - b).norm() / b.norm()).item() for k, b in zip(layer.kernels, before)]
    assert len(moved) == 9 and min(moved) > 0
    assert max(moved) / min(moved) < 2.5, moved
