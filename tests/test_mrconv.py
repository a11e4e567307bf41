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


# ---- merged state: the spectrum cache ----------------------------------------------------------------------


def merged_layer(seed=0, max_len=700):
    torch.manual_seed(seed)
    return trained_layer("fourier", True, torch.float64, max_len=max_len).reparameterize()


def test_merged_cache_is_keyed_by_rate():
    # 500 samples at 1.5x and at 2x: both reach the kernel's end, so the FFT grid (and the spectrum's shape) is the
    # same; only the rate tells the two spectra apart.
    layer, fresh = merged_layer(), merged_layer()
    u = torch.randn(2, 6, 500, dtype=torch.float64)
    assert layer.fft_length(500, 1.5) == layer.fft_length(500, 2.0)
    with torch.no_grad():
        layer(u, 1.5)
        torch.testing.assert_close(layer(u, 2.0), fresh(u, 2.0), rtol=0, atol=0)
        assert not torch.allclose(layer(u, 1.5), layer(u, 2.0))


def test_load_state_dict_and_in_place_changes_reach_a_merged_layer():
    layer, other = merged_layer(0), merged_layer(1)
    u = torch.randn(2, 6, 700, dtype=torch.float64)
    with torch.no_grad():
        for ratio in (1.0, 2.0):
            layer(u, ratio)  # fills the cache with the old weights' spectra
        layer.load_state_dict(other.state_dict())
        for ratio in (1.0, 2.0):
            torch.testing.assert_close(layer(u, ratio), other(u, ratio), rtol=0, atol=0)
        layer.kernels[0].modes.mul_(2.0)  # an in-place change to one parameter
        other.kernels[0].modes.mul_(2.0)
        other._spectrum_cache.clear()
        torch.testing.assert_close(layer(u, 2.0), other(u, 2.0), rtol=0, atol=0)


def test_a_no_op_to_keeps_the_cache_and_a_real_move_recomputes(monkeypatch):
    layer = merged_layer()
    computed = []
    compute = layer._compute_spectrum
    monkeypatch.setattr(layer, "_compute_spectrum", lambda *args: computed.append(args) or compute(*args))
    u = torch.randn(1, 6, 700, dtype=torch.float64)
    with torch.no_grad():
        first = layer(u, 3.0)
        layer.to("cpu")
        layer.to(torch.float64)
        layer.eval()
        assert torch.equal(layer(u, 3.0), first) and len(computed) == 1
        layer.float()
        assert len(layer._spectrum_cache) == 0  # the float64 spectra went with the dtype
        torch.testing.assert_close(layer(u.float(), 3.0), first.float(), rtol=1e-4, atol=1e-4)
        assert len(computed) == 2


def test_the_cache_is_bounded_in_bytes():
    layer = merged_layer()
    layer._spectrum_cache.max_bytes = 200_000  # about 4 spectra of a 700-sample input
    u = torch.randn(1, 6, 300, dtype=torch.float64)
    with torch.no_grad():
        for i in range(40):
            layer(u, 1 + i / 10)
            assert layer._spectrum_cache.nbytes() <= 200_000 or len(layer._spectrum_cache) == 1
    assert 1 < len(layer._spectrum_cache) < 10
    big = torch.randn(1, 6, 6000, dtype=torch.float64)
    with torch.no_grad():
        layer(big, 10.0)  # one spectrum above the bound is kept alone (it is in use)
    assert len(layer._spectrum_cache) == 1


def test_concurrent_forwards_and_clears_never_fail_or_mix_spectra():
    """Several demo sessions share a model: lookups racing with clears and evictions must stay correct."""
    import sys
    import threading

    layer, reference = merged_layer(), merged_layer()
    layer._spectrum_cache.max_bytes = 100_000  # evictions all the time
    inputs = {ratio: torch.randn(1, 6, 200, dtype=torch.float64) for ratio in (1.0, 1.5, 2.0, 3.0)}
    with torch.no_grad():
        expected = {ratio: reference(u, ratio) for ratio, u in inputs.items()}
    errors, stop = [], threading.Event()

    def serve(ratios):
        try:
            with torch.no_grad():
                for _ in range(20):
                    for ratio in ratios:
                        if not torch.equal(layer(inputs[ratio], ratio), expected[ratio]):
                            errors.append(f"wrong output at {ratio}")
        except Exception as e:  # noqa: BLE001 - any failure in a worker fails the test
            errors.append(repr(e))

    def clear():
        while not stop.is_set():
            layer._spectrum_cache.clear()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        workers = [threading.Thread(target=serve, args=(list(inputs)[i:] + list(inputs)[:i],)) for i in range(4)]
        cleaner = threading.Thread(target=clear)
        cleaner.start()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        stop.set()
        cleaner.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []


def test_a_clear_from_another_thread_cannot_break_a_lookup():
    """Deterministic form of the race: another thread clears the cache right after a lookup stores its spectrum.
    Checking, storing and reading under one lock makes the clear wait; an unlocked cache raised KeyError here."""
    import threading
    from collections import OrderedDict

    from mrconv_audio.mrconv import SpectrumCache

    cache = SpectrumCache(2**30)

    class ClearedFromAnotherThread(OrderedDict):
        def __setitem__(self, key, value):
            super().__setitem__(key, value)
            clearer = threading.Thread(target=cache.clear)
            clearer.start()
            clearer.join(timeout=0.5)  # a locked cache keeps the clear waiting until the lookup is done

    cache._entries = ClearedFromAnotherThread()
    value = torch.ones(3)
    assert cache.get("key", (1,), lambda: value) is value
