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


def write_config(tmp_path, **fields):
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"].update(fields)
    (tmp_path / "config.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("field,value,message", [
    ("d_model", True, "d_model must be an integer, got True"),
    ("depth", 3.0, "depth must be an integer, got 3.0"),
    ("d_model", 48.5, "d_model must be an integer, got 48.5"),
    ("labels", "abcdefghijkl", "labels must be a list of strings"),
    ("labels", ["a", 1, "b"], "labels must be a list of strings"),
    ("depth", 1_000_000, "depth must be between 1 and 64"),
    ("d_model", 1_000_000, "d_model must be between 1 and 4096"),
    ("clip_seconds", 1e9, "clip_seconds must be between"),
    ("input_std", "0.2", "input_std must be a finite number"),
    ("bidirectional", 1, "bidirectional must be true or false"),
])
def test_config_fields_of_the_wrong_type_or_size_are_named_with_the_file(tmp_path, field, value, message):
    make_model().save_pretrained(tmp_path)
    write_config(tmp_path, **{field: value})
    with pytest.raises(CheckpointError, match=f"config.json: field 'config': MRConvConfig.{message}"):
        MRConvClassifier.from_pretrained(tmp_path)


def test_a_config_larger_than_its_weights_is_refused_before_allocating(tmp_path, monkeypatch):
    """d_model 4096 would allocate hundreds of MB; the weights file's header disagrees, so nothing is built."""
    make_model().save_pretrained(tmp_path)
    write_config(tmp_path, d_model=4096, depth=64)
    built = []
    monkeypatch.setattr(MRConvClassifier, "reparameterize", lambda self: built.append(self) or self)
    real_init = MRConvClassifier.__init__

    def watching_init(self, cfg):
        real_init(self, cfg)
        built.append(next(self.parameters()).device.type)

    monkeypatch.setattr(MRConvClassifier, "__init__", watching_init)
    with pytest.raises(CheckpointError, match="does not match config.json"):
        MRConvClassifier.from_pretrained(tmp_path)
    assert built == ["meta"]  # only the shape skeleton, on the meta device


def test_deeply_nested_or_huge_config_json_is_named(tmp_path):
    make_model().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="config.json: not valid JSON \\(nested too deeply\\)"):
        MRConvClassifier.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(" " * (2 << 20))
    with pytest.raises(CheckpointError, match="config.json: .* bytes, more than a config.json holds"):
        MRConvClassifier.from_pretrained(tmp_path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_or_statistics_are_refused(tmp_path, value):
    from safetensors.torch import load_file, save_file

    make_model().save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["blocks.0.norm.running_var"][3] = value
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="tensor 'blocks.0.norm.running_var' holds NaN or infinite values"):
        MRConvClassifier.from_pretrained(tmp_path)
    make_model().save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["input_std"] = value  # json writes NaN / Infinity, which Python's parser reads back
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="MRConvConfig.input_std must be a finite number"):
        MRConvClassifier.from_pretrained(tmp_path)


def test_saved_models_are_readable_by_others_as_the_umask_says(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        make_model().save_pretrained(tmp_path / "shared")
        os.umask(0o077)
        make_model().save_pretrained(tmp_path / "private")
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / "shared" / name).stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "private" / name).stat().st_mode) == 0o600
