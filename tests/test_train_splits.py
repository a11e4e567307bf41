"""Training reads each split for what it is for: statistics from the training split, model selection on validation."""
import numpy as np
import pytest

from mrconv_audio import MRConvClassifier, train as train_module
from mrconv_audio.data.cache import load_split
from mrconv_audio.data.speech_commands import SpeechCommands
from mrconv_audio.train import TrainConfig, train
from speech_tree import make_speech_commands


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_speech_commands(tmp_path_factory.mktemp("data") / "sc", speakers=8)


def config(tree, tmp_path, **overrides):
    values = dict(data_root=str(tree), out=str(tmp_path / "run"), preset="small", task="kws12", epochs=2,
                  batch_size=4, sample_rate=4000, cache_dir=str(tmp_path / "cache"), augment=False,
                  model_overrides={"d_model": 8, "depth": 1})
    return TrainConfig(**{**values, **overrides})


def split_paths(tree, tmp_path, split: str) -> set[str]:
    loaded = load_split(SpeechCommands(tree), "kws12", split, 4000, cache_dir=tmp_path / "cache", log=lambda *a: None,
                        unknown_fraction=None)
    return set(loaded.paths)


@pytest.fixture(scope="module")
def run(tree, tmp_path_factory):
    """One short training run, with validate() watched: (run folder, the paths each validation pass saw)."""
    tmp_path = tmp_path_factory.mktemp("train")
    seen = []
    real_validate = train_module.validate

    def spying_validate(model, split, *args, **kwargs):
        seen.append(set(split.paths))
        return real_validate(model, split, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "validate", spying_validate)
        out = train(config(tree, tmp_path), log=lambda *a: None)
    return out, seen, tmp_path


def test_model_selection_sees_the_validation_split_only(tree, run):
    out, seen, tmp_path = run
    validation, test = split_paths(tree, tmp_path, "validation"), split_paths(tree, tmp_path, "test")
    assert len(seen) == 2 and validation and test  # once per epoch
    for paths in seen:
        assert paths and paths <= validation and not paths & test


def test_input_normalization_is_the_training_clips_statistics(tree, run):
    out, _, tmp_path = run
    model = MRConvClassifier.from_pretrained(out / "best")
    clips = load_split(SpeechCommands(tree), "kws12", "train", 4000, cache_dir=tmp_path / "cache", log=lambda *a: None,
                       unknown_fraction=None)
    assert len(clips) < 4000  # all of them make the sample
    audio = clips.waveforms(np.arange(len(clips))).double()
    assert model.config.input_mean == pytest.approx(audio.mean().item(), rel=1e-5, abs=1e-7)
    assert model.config.input_std == pytest.approx(audio.std().item(), rel=1e-5)
    validation = load_split(SpeechCommands(tree), "kws12", "validation", 4000, cache_dir=tmp_path / "cache",
                            log=lambda *a: None).waveforms(np.arange(5)).double()
    assert model.config.input_std != pytest.approx(validation.std().item(), rel=1e-5)  # it could tell them apart


def test_no_noise_recording_is_heard_in_two_splits(tree, run):
    """Every pair of splits, on what training and evaluation load: the _silence_ clips' source recordings."""
    _, _, tmp_path = run
    noise = {}
    for split in ("train", "validation", "test"):
        loaded = load_split(SpeechCommands(tree), "kws12", split, 4000, cache_dir=tmp_path / "cache",
                            log=lambda *a: None, unknown_fraction=None)
        silence = loaded.label_names.index("_silence_")
        noise[split] = {path for path, label in zip(loaded.paths, loaded.labels) if label == silence}
        assert noise[split], split
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not noise[a] & noise[b], (a, b)
