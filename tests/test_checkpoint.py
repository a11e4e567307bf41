import json

import pytest
import torch

from helpers import randomize_batchnorms
from mrconv_audio import MRConvClassifier, MRConvConfig
from mrconv_audio.checkpoint import CheckpointError


def make_model(**overrides):
    values = dict(d_model=8, depth=2, l0=16, n_modes=8, sample_rate=1000, labels=["yes", "no", "up"],
                  input_mean=0.01, input_std=0.3)
    model = MRConvClassifier(MRConvConfig(**{**values, **overrides}))
    randomize_batchnorms(model)
    return model.eval()


@pytest.mark.parametrize("merged", [False, True])
def test_round_trip_preserves_outputs_config_and_form(tmp_path, merged):
    model = make_model(kernel="sparse" if not merged else "fourier")
    if merged:
        model.reparameterize()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["reparameterized"] is merged
    assert meta["config"]["labels"] == ["yes", "no", "up"] and meta["config"]["sample_rate"] == 1000
    assert meta["config"]["input_mean"] == 0.01 and meta["config"]["input_std"] == 0.3
    loaded = MRConvClassifier.from_pretrained(tmp_path)
    assert loaded.reparameterized is merged and not loaded.training
    x = torch.randn(2, 1000)
    assert torch.equal(loaded(x), model(x))
    assert loaded.config == model.config


@pytest.mark.parametrize("merged", [False, True])
def test_a_float64_model_loads_as_it_was_saved(tmp_path, merged):
    model = make_model().double()
    if merged:
        model.reparameterize()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float64"
    loaded = MRConvClassifier.from_pretrained(tmp_path)
    assert next(loaded.parameters()).dtype == torch.float64
    x = torch.randn(2, 1000, dtype=torch.float64)
    assert torch.equal(loaded(x), model(x))


def test_a_dtype_the_weights_do_not_have_is_named(tmp_path):
    make_model().double().save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**meta, "dtype": "float32"}))
    with pytest.raises(CheckpointError, match="model.safetensors: tensor .* is .* torch.float64, the config expects"):
        MRConvClassifier.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**meta, "dtype": "int8"}))
    with pytest.raises(CheckpointError, match="config.json: field 'dtype' must be one of"):
        MRConvClassifier.from_pretrained(tmp_path)


def test_weights_are_safetensors_not_pickle(tmp_path):
    make_model().save_pretrained(tmp_path)
    raw = (tmp_path / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert "blocks.0.conv.kernels.0.modes" in header
    assert b"\x80\x04" not in raw[:2]  # no pickle protocol marker


def test_merged_checkpoint_stays_small(tmp_path):
    model = MRConvClassifier(MRConvConfig.preset("sc35-paper")).reparameterize()
    model.save_pretrained(tmp_path)
    # 6 layers x 128 channels x 16,000 taps x 2 directions of merged kernel samples would be 98 MB.
    assert (tmp_path / "model.safetensors").stat().st_size < 3_000_000


def test_missing_folder_and_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such model folder"):
        MRConvClassifier.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="config.json: missing"):
        MRConvClassifier.from_pretrained(tmp_path)
    make_model().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: missing"):
        MRConvClassifier.from_pretrained(tmp_path)


def test_truncated_weights_are_reported(tmp_path):
    make_model().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable or truncated"):
        MRConvClassifier.from_pretrained(tmp_path)


def test_corrupt_or_foreign_config_is_reported(tmp_path):
    make_model().save_pretrained(tmp_path)
    config = tmp_path / "config.json"
    config.write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        MRConvClassifier.from_pretrained(tmp_path)
    config.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="field 'format' must be 'mrconv-audio'"):
        MRConvClassifier.from_pretrained(tmp_path)


def test_config_that_does_not_match_weights_names_the_tensor(tmp_path):
    make_model().save_pretrained(tmp_path)
    config = tmp_path / "config.json"
    meta = json.loads(config.read_text())
    meta["config"]["labels"] = ["a", "b"]  # 2 classes, weights have 3
    config.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="tensor 'decoder.bias' is \\(3,\\).*expects \\(2,\\)"):
        MRConvClassifier.from_pretrained(tmp_path)
    meta["config"]["labels"] = ["yes", "no", "up"]
    meta["config"]["depth"] = 3
    config.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="missing tensors \\['blocks.2"):
        MRConvClassifier.from_pretrained(tmp_path)
    meta["config"]["depth"] = -1
    config.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="field 'config': MRConvConfig.depth"):
        MRConvClassifier.from_pretrained(tmp_path)


def test_version_1_checkpoints_with_scaled_fourier_modes_load_unchanged(tmp_path):
    """Format 1 stored Fourier modes multiplied by their kernel's scale; format 2 stores them at unit scale."""
    from safetensors.torch import load_file, save_file

    from mrconv_audio.kernels import FourierKernel

    model = make_model()
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    for name, module in model.named_modules():
        if isinstance(module, FourierKernel):
            tensors[f"{name}.modes"] = tensors[f"{name}.modes"] * module.scale
    save_file(tensors, tmp_path / "model.safetensors")
    meta = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**meta, "format_version": 1}))
    x = torch.randn(2, 1000)
    torch.testing.assert_close(MRConvClassifier.from_pretrained(tmp_path)(x), model(x), rtol=1e-5, atol=1e-6)
    (tmp_path / "config.json").write_text(json.dumps({**meta, "format_version": 3}))
    with pytest.raises(CheckpointError, match="'format_version' must be one of"):
        MRConvClassifier.from_pretrained(tmp_path)
