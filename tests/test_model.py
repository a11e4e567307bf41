import math

import pytest
import torch

from helpers import randomize_batchnorms
from mrconv_audio import MRConvClassifier, MRConvConfig
from mrconv_audio.kernels import ContinuousKernelError


def tiny_config(**overrides) -> MRConvConfig:
    values = dict(d_model=8, depth=2, l0=16, n_modes=8, sample_rate=1000, labels=["a", "b", "c"], dropout=0.0)
    return MRConvConfig(**{**values, **overrides})


def trained_model(cfg):
    model = MRConvClassifier(cfg)
    randomize_batchnorms(model)
    return model.eval()


def test_paper_preset_matches_table_5():
    cfg = MRConvConfig.preset("sc35-paper")
    assert (cfg.kernel, cfg.bidirectional, cfg.depth, cfg.d_model, cfg.l0) == ("fourier", True, 6, 128, 32)
    assert (cfg.branch_norm, cfg.prenorm, cfg.dropout, cfg.sample_rate, cfg.max_len) == ("batchnorm", True, 0.1, 16000, 16000)
    assert len(cfg.labels) == 35 and cfg.n_classes == 35
    assert len(MRConvClassifier(cfg).blocks[0].conv.lengths) == 10
    assert set(MRConvConfig.presets()) >= {"sc35-paper", "small"}
    small = MRConvConfig.preset("small")
    assert small.d_model < cfg.d_model and small.depth < cfg.depth
    assert MRConvConfig.preset("small", depth=3).depth == 3


def test_unknown_preset_and_bad_fields_are_named():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*sc35-paper"):
        MRConvConfig.preset("huge")
    with pytest.raises(ValueError, match="MRConvConfig.kernel"):
        MRConvConfig(kernel="wavelet")
    with pytest.raises(ValueError, match="MRConvConfig.n_modes"):
        MRConvConfig(n_modes=17)
    with pytest.raises(ValueError, match="unknown MRConvConfig fields: \\['width'\\]"):
        MRConvConfig.from_dict({"width": 3})


def test_forward_shapes_and_window_limit():
    model = trained_model(tiny_config())
    assert model(torch.randn(4, 1000)).shape == (4, 3)
    assert model(torch.randn(2, 300)).shape == (2, 3)  # shorter than the window
    with pytest.raises(ValueError, match="1001 samples is longer than the model's 1 s window"):
        model(torch.randn(1, 1001))
    with pytest.raises(ValueError, match="out of range for a model trained at 1000 Hz"):
        model(torch.randn(1, 10), sample_rate=100)
    with pytest.raises(ValueError, match="shape \\(batch, time\\)"):
        model(torch.randn(1000))
    assert model(torch.randn(1, 3000), sample_rate=3000).shape == (1, 3)


@pytest.mark.parametrize("kernel", ["fourier", "dilated", "sparse", "fourier_sparse"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_reparameterized_model_matches_branch_model(kernel, bidirectional, dtype, rtol):
    model = trained_model(tiny_config(kernel=kernel, bidirectional=bidirectional)).to(dtype)
    x = torch.randn(3, 1000, dtype=dtype)
    with torch.no_grad():
        before = model(x)
        model.reparameterize()
        after = model(x)
    assert model.reparameterized and not model.training
    assert ((after - before).abs().max() / before.abs().max()) < rtol


def test_any_rate_same_rate_is_bit_identical_and_others_run():
    model = trained_model(tiny_config())
    x = torch.randn(2, 1000)
    assert torch.equal(model(x), model(x, sample_rate=1000))
    for rate in [4000, 2756.25, 500.0 * 9]:
        n = model.max_samples(rate)
        assert n == math.ceil(1000 * rate / 1000 - 1e-9)
        assert torch.isfinite(model(torch.randn(2, n), sample_rate=rate)).all()


def test_any_rate_classifies_a_resampled_signal_alike():
    # A smooth, band-limited test signal (well below every Nyquist) gives nearly the same logits at every rate.
    model = trained_model(tiny_config(sample_rate=8000, n_modes=4)).double()
    logits = {}
    for rate in [8000, 16000, 22050, 44100]:
        t = torch.arange(model.max_samples(rate), dtype=torch.float64) / rate
        x = torch.sin(2 * math.pi * 150 * t) + 0.5 * torch.sin(2 * math.pi * 410 * t + 1.0)
        logits[rate] = model(x[None], sample_rate=rate)[0]
    for rate in [16000, 22050, 44100]:
        assert (logits[rate] - logits[8000]).abs().max() < 0.05 * logits[8000].abs().max()


def test_dilated_model_refuses_another_rate():
    model = trained_model(tiny_config(kernel="dilated"))
    with pytest.raises(ContinuousKernelError):
        model(torch.randn(1, 500), sample_rate=500)


def test_sparse_tap_positions_differ_from_layer_to_layer():
    model = MRConvClassifier(tiny_config(kernel="sparse", depth=3))
    longest = [block.conv.kernels[-1].positions for block in model.blocks]  # 16 of 1000 places
    assert not torch.equal(longest[0], longest[1]) and not torch.equal(longest[1], longest[2])
    again = MRConvClassifier(tiny_config(kernel="sparse", depth=3))
    assert torch.equal(again.blocks[2].conv.kernels[-1].positions, longest[2])  # still reproducible


def test_padding_is_ignored_by_the_global_convolution_and_the_pooling():
    model = trained_model(tiny_config()).double()
    a, b = torch.randn(1, 1000, dtype=torch.float64), torch.randn(1, 600, dtype=torch.float64)
    batch = torch.zeros(2, 1000, dtype=torch.float64)
    batch[0], batch[1, :600] = a[0], b[0]
    out = model(batch, lengths=torch.tensor([1000, 600]))
    torch.testing.assert_close(out[0], model(a)[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out[1], model(b)[0], rtol=1e-9, atol=1e-9)


def test_input_normalization_uses_config_statistics():
    cfg = tiny_config(input_mean=0.5, input_std=2.0)
    model = trained_model(cfg).double()
    plain = trained_model(tiny_config()).double()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 1000, dtype=torch.float64)
    torch.testing.assert_close(model(x), plain((x - 0.5) * 0.1))


def test_parameter_groups_separate_kernel_parameters():
    model = MRConvClassifier(tiny_config())
    kernel, rest = model.parameter_groups()
    assert kernel["lr"] == 0.001 and kernel["weight_decay"] == 0.0
    assert rest["lr"] == 0.005 and rest["weight_decay"] == 0.05
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith(".modes") for p in kernel["params"])
    assert len(kernel["params"]) == 2 * len(model.blocks[0].conv.lengths)
    assert len(kernel["params"]) + len(rest["params"]) == len(list(model.parameters()))


def test_small_model_learns_a_toy_task():
    # Two classes told apart by pitch: a few steps of AdamW must fit them (real learning, not a shape check).
    torch.manual_seed(0)
    model = MRConvClassifier(tiny_config(labels=["low", "high"], depth=1))
    t = torch.arange(1000) / 1000

    def batch(n=16):
        y = torch.randint(0, 2, (n,))
        freq = torch.where(y == 0, 30.0, 120.0) * (1 + 0.1 * torch.rand(n))
        x = torch.sin(2 * math.pi * freq[:, None] * t + 6.28 * torch.rand(n, 1)) + 0.1 * torch.randn(n, 1000)
        return x, y

    opt = torch.optim.AdamW(model.parameter_groups(lr=0.01))
    for _ in range(40):
        x, y = batch()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = batch(200)
    model.reparameterize()
    accuracy = (model(x).argmax(-1) == y).float().mean()
    assert accuracy > 0.95


def logmel_config(**overrides) -> MRConvConfig:
    values = dict(frontend="logmel", d_model=8, depth=2, l0=8, n_modes=4, labels=["a", "b", "c"], dropout=0.0)
    return MRConvConfig(**{**values, **overrides})


def test_logmel_preset_convolves_frames():
    cfg = MRConvConfig.preset("logmel")
    assert (cfg.frontend, cfg.frame_rate, cfg.max_len, cfg.branch_norm, cfg.kernel) == (
        "logmel", 100, 100, "batchnorm", "fourier")
    model = MRConvClassifier(cfg)
    assert model.blocks[0].conv.lengths == [8, 16, 32, 64, 100]
    assert sum(p.numel() for p in model.parameters()) < 140_000


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_logmel_model_reparameterizes_exactly(dtype, rtol):
    model = trained_model(logmel_config()).to(dtype)
    x = 0.1 * torch.randn(3, 16000, dtype=dtype)
    with torch.no_grad():
        before = model(x)
        model.reparameterize()
        after = model(x)
    assert ((after - before).abs().max() / before.abs().max()) < rtol


def test_logmel_model_runs_from_8_khz_up_and_names_what_it_cannot_run():
    model = trained_model(logmel_config())
    assert model.rate_range() == (8000, 192000)
    for rate in (8000, 11025, 44100, 48000):
        assert model(0.1 * torch.randn(2, model.max_samples(rate)), sample_rate=rate).shape == (2, 3)
    with pytest.raises(ValueError, match="sample_rate 6000 Hz is out of range .* expected 8000 to 192000 Hz"):
        model(torch.randn(1, 6000), sample_rate=6000)


def test_logmel_model_hears_the_same_sound_alike_at_every_rate():
    model = trained_model(logmel_config()).double()
    logits = {}
    for rate in (8000, 16000, 32000, 44100, 48000):
        t = torch.arange(rate, dtype=torch.float64) / rate
        x = 0.3 * torch.sin(2 * math.pi * 440 * t) * torch.exp(-3 * t) + 0.1 * torch.sin(2 * math.pi * 1900 * t + 1)
        logits[rate] = model(x[None], sample_rate=rate)[0]
    for rate in (8000, 32000, 44100, 48000):
        torch.testing.assert_close(logits[rate], logits[16000], rtol=0, atol=1e-3 * logits[16000].abs().max().item())


def test_logmel_padding_is_ignored():
    model = trained_model(logmel_config()).double()
    a, b = 0.1 * torch.randn(1, 16000, dtype=torch.float64), 0.1 * torch.randn(1, 9600, dtype=torch.float64)
    batch = torch.zeros(2, 16000, dtype=torch.float64)
    batch[0], batch[1, :9600] = a[0], b[0]
    out = model(batch, lengths=torch.tensor([16000, 9600]))
    torch.testing.assert_close(out[0], model(a)[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out[1], model(b)[0], rtol=1e-9, atol=1e-9)
