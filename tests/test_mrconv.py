import math

import pytest
import torch

from mrconv_audio.fftconv import direct_conv
from mrconv_audio.mrconv import MRConv, branch_lengths

from helpers import randomize_batchnorms

KINDS = ["fourier", "dilated", "sparse", "fourier_sparse"]


def test_branch_lengths_follow_the_paper():
    lengths = branch_lengths(16000, 32)
    assert len(lengths) == 10  # ceil(log2(16000 / 32)) + 1
    assert lengths == [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16000]
    assert branch_lengths(1024, 32) == [32, 64, 128, 256, 512, 1024]
    with pytest.raises(ValueError, match="l0"):
        branch_lengths(100, 200)


def trained_layer(kind, bidirectional, dtype, norm="batchnorm", channels=6, max_len=700):
    layer = MRConv(channels, max_len, 16, kind, 8, bidirectional, norm).to(dtype)
    randomize_batchnorms(layer)
    with torch.no_grad():
        layer.alpha.normal_()
    return layer.eval()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_reparameterized_layer_equals_branches(kind, bidirectional, dtype, rtol):
    layer = trained_layer(kind, bidirectional, dtype)
    u = torch.randn(3, 6, 700, dtype=dtype)
    with torch.no_grad():
        branches = layer(u)
        layer.reparameterize()
        merged = layer(u)
    err = (merged - branches).abs().max() / branches.abs().max()
    assert err < rtol, f"relative error {err:.2e}"


def test_merged_layer_keeps_its_bias_when_autograd_is_on():
    layer = trained_layer("fourier", True, torch.float64)
    u = torch.randn(2, 6, 700, dtype=torch.float64)
    expected = layer(u).detach()
    layer.reparameterize()
    assert layer.bias.abs().max() > 0.1  # BatchNorm means and betas fold into a real bias
    traced = layer(u.clone().requires_grad_())  # the out-of-place path, as when gradients flow to the input
    torch.testing.assert_close(traced.detach(), expected, rtol=1e-10, atol=1e-10)


def test_branch_form_matches_a_direct_computation_of_eq_12():
    layer = trained_layer("fourier", True, torch.float64, max_len=200)
    u = torch.randn(2, 6, 150, dtype=torch.float64)
    expected = layer.D[:, None] * u
    for i, (kernel, norm) in enumerate(zip(layer.kernels, layer.norms)):
        expected = expected + layer.alpha[i, :, None] * norm(direct_conv(u, kernel()))
    torch.testing.assert_close(layer(u), expected, rtol=0, atol=1e-10)


def test_merged_layer_runs_one_fft_convolution(monkeypatch):
    layer = trained_layer("fourier", True, torch.float32)
    u = torch.randn(2, 6, 700)
    calls = {"rfft": 0, "irfft": 0}
    real_rfft, real_irfft = torch.fft.rfft, torch.fft.irfft

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(torch.fft, "rfft", counting("rfft", real_rfft))
    monkeypatch.setattr(torch.fft, "irfft", counting("irfft", real_irfft))
    with torch.no_grad():
        layer(u)
        n_branch_irfft = calls["irfft"]
        layer.reparameterize()
        layer(u)  # builds and caches the merged kernel's spectrum
        calls.update(rfft=0, irfft=0)
        layer(u)
    assert n_branch_irfft >= len(layer.lengths)
    assert calls == {"rfft": 1, "irfft": 1}


def test_rescale_mode_trains_as_a_single_merged_kernel():
    layer = MRConv(4, 300, 16, "fourier", 8, True, "rescale").double()
    assert layer.norms is None
    u = torch.randn(2, 4, 300, dtype=torch.float64)
    expected = direct_conv(u, layer.merged_kernel()) + layer.D[:, None] * u
    y = layer.train()(u)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-10)
    y.square().mean().backward()  # differentiable while training: kernels and alpha get gradients
    assert layer.alpha.grad is not None and layer.kernels[0].modes.grad is not None
    with torch.no_grad():
        layer.eval()
        before = layer(u)
        layer.reparameterize()
        torch.testing.assert_close(layer(u), before, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("length", [1, 17, 333, 700])
def test_inputs_of_any_length_up_to_max_len(length):
    layer = trained_layer("fourier", True, torch.float64)
    u = torch.randn(2, 6, length, dtype=torch.float64)
    expected = layer.D[:, None] * u
    for i, (kernel, norm) in enumerate(zip(layer.kernels, layer.norms)):
        expected = expected + layer.alpha[i, :, None] * norm(direct_conv(u, kernel()))
    torch.testing.assert_close(layer(u), expected, rtol=0, atol=1e-10)


def test_merged_layer_cannot_train():
    layer = trained_layer("fourier", False, torch.float32)
    layer.reparameterize()
    with pytest.raises(RuntimeError, match="reparameterized"):
        layer.train()(torch.randn(1, 6, 10))


# ---- any sample rate -----------------------------------------------------------------------------------------


def sinusoid_gain(layer, rate, freq, r0=16000, seconds=0.25):
    """Complex gain (per channel) of the layer to a sinusoid of `freq` Hz, measured in steady state."""
    t = torch.arange(int(rate * seconds), dtype=torch.float64) / rate
    x = torch.sin(2 * math.pi * freq * t).expand(1, layer.channels, -1).contiguous()
    with torch.no_grad():
        y = layer(x, rate / r0)[0]
    edge = math.ceil(layer.max_len * rate / r0) + 2  # skip the transients at both ends
    y, t = y[:, edge:-edge], t[edge:-edge]
    basis = torch.stack([torch.sin(2 * math.pi * freq * t), torch.cos(2 * math.pi * freq * t), torch.ones_like(t)], 1)
    fit = torch.linalg.lstsq(basis, y.T).solution  # (3, H)
    assert (basis @ fit - y.T).abs().max() < 1e-8  # steady state really is a sinusoid at that frequency
    return torch.complex(fit[0], fit[1])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_same_rate_is_bit_identical(bidirectional):
    layer = trained_layer("fourier", bidirectional, torch.float32)
    u = torch.randn(2, 6, 700)
    assert torch.equal(layer(u), layer(u, 1.0))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("rate", [32000, 48000])
@pytest.mark.parametrize("freq", [1000.0, 3000.0])
def test_sinusoid_gain_and_phase_exact_at_integer_rate_ratios(bidirectional, rate, freq):
    # Every sub-kernel (l0 = 16 -> 1 ms and its doublings) spans whole periods of these frequencies, so sampling
    # its Fourier series more finely integrates the sinusoid exactly: gain and phase agree to rounding.
    layer = trained_layer("fourier", bidirectional, torch.float64, max_len=512)
    g0, g = sinusoid_gain(layer, 16000, freq), sinusoid_gain(layer, rate, freq)
    assert ((g - g0).abs() / g0.abs()).max() < 1e-9


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("rate", [22050, 44100, 48000])
@pytest.mark.parametrize("freq", [100.0, 440.0, 1234.5])
def test_sinusoid_gain_and_phase_close_at_any_rate(bidirectional, rate, freq):
    # Sub-kernels are Fourier series cut to a finite window, so they are not strictly band-limited: the window's
    # edges give each rate a different O(1/rate) quadrature error, largest for the shortest, full-band sub-kernels.
    # Measured on this random layer (l0 = 16, 8 modes): 2-13% of the largest channel gain; see README.
    layer = trained_layer("fourier", bidirectional, torch.float64, max_len=512)
    g0, g = sinusoid_gain(layer, 16000, freq), sinusoid_gain(layer, rate, freq)
    assert ((g - g0).abs().max() / g0.abs().max()) < 0.15


@pytest.mark.parametrize("rate", [8000, 11025, 44100])
def test_merged_layer_resamples_like_the_branches(rate):
    layer = trained_layer("fourier", True, torch.float64)
    ratio = rate / 16000
    u = torch.randn(2, 6, math.ceil(700 * ratio), dtype=torch.float64)
    with torch.no_grad():
        branches = layer(u, ratio)
        layer.reparameterize()
        merged = layer(u, ratio)
        again = layer(u, ratio)  # served from the per-rate cache
    torch.testing.assert_close(merged, branches, rtol=1e-10, atol=1e-10)
    assert torch.equal(merged, again)
