"""The model shipped in models/kws12-mrconv: present, small, loadable, and as accurate as its card says."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mrconv_audio import MRConvClassifier
from mrconv_audio.data import SpeechCommands
from mrconv_audio.data.cache import load_split
from mrconv_audio.data.speech_commands import TASKS
from mrconv_audio.evaluate import default_model_dir, predict, score

MODEL = default_model_dir()
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOTS = [DATA / "speech_commands_subset", DATA / "speech_commands_more"]  # the card's evaluation joins both


def test_shipped_model_is_complete_and_small():
    assert MODEL == Path(__file__).resolve().parents[1] / "models" / "kws12-mrconv"
    files = {p.name for p in MODEL.iterdir()}
    assert {"config.json", "model.safetensors", "MODEL_CARD.md", "evaluation.json"} <= files
    assert sum(p.stat().st_size for p in MODEL.iterdir()) < 10_000_000
    model = MRConvClassifier.from_pretrained(MODEL)
    assert model.labels == TASKS["kws12"]
    assert model.config.kernel == "fourier" and model.config.bidirectional
    for rate in (8000, 16000, 44100, 48000):  # runs at every rate the demo offers
        assert model(torch.zeros(1, model.max_samples(rate)), sample_rate=rate).shape == (1, 12)


def test_shipped_model_accuracy_matches_its_evaluation(tmp_path):
    if not all(root.is_dir() for root in ROOTS):
        pytest.skip(f"{ROOTS} not present")
    evaluation = json.loads((MODEL / "evaluation.json").read_text())
    assert [Path(root).name for root in evaluation["data_root"]] == [root.name for root in ROOTS]
    reported = {(r["rate"], r["mode"]): r for r in evaluation["results"]}
    split = load_split(SpeechCommands(ROOTS), "kws12", "test", cache_dir=tmp_path, log=lambda *a: None)
    model = MRConvClassifier.from_pretrained(MODEL).reparameterize()
    x, y = split.waveforms(np.arange(len(split))), torch.from_numpy(split.labels)
    accuracy, _, _ = score(predict(model, x, sample_rate=16000, batch_size=32), y, model.labels)
    expected = reported[(16000, "kernel")]
    assert len(split) == expected["n"]
    assert accuracy == pytest.approx(expected["accuracy"], abs=0.003)
