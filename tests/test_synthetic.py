"""Synthetic speakers (espeak-ng) and training with extra clips."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mrconv_audio.data import SpeechCommands
from mrconv_audio.data.speech_commands import KWS_WORDS, UNKNOWN, DataError
from mrconv_audio.data.synthetic import synthesize
from mrconv_audio.train import TrainConfig, train
from speech_tree import make_speech_commands

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng)")


@needs_espeak
def test_synthesized_words_are_one_second_clips_in_the_speech_commands_layout(tmp_path):
    summary = synthesize(tmp_path / "synth", per_keyword=3, per_other_word=1, seed=3, log=lambda *a: None)
    data = SpeechCommands(tmp_path / "synth")
    assert all(len(data.clips[w]) == 3 for w in KWS_WORDS) and len(data.clips["bed"]) == 1
    assert summary["clips"]["yes"] == 3 and json.loads((tmp_path / "synth" / "synthesis.json").read_text())["seed"] == 3
    examples = data.examples("kws12", "train", silence_fraction=0.0)
    assert len(examples) == 30 + 3 and sum(e.label == UNKNOWN for e in examples) == 3  # all of it trains
    voices, onsets = set(), []
    for path in data.clips["stop"] + data.clips["go"]:
        x, rate = sf.read(path, dtype="float32")
        info = sf.info(path)
        assert rate == 16000 and len(x) == 16000 and info.subtype == "PCM_16"
        loud = np.flatnonzero(np.abs(x) > 0.01)
        assert 0.09 < np.abs(x).max() <= 0.91 and 0.1 * 16000 < loud[-1] - loud[0] < 16000  # a word, not a click
        onsets.append(loud[0])
        voices.add(Path(path).name.split("_nohash_")[0])
    assert len(voices) == 6 and len(set(onsets)) > 1  # other voices, other offsets
    again = synthesize(tmp_path / "again", per_keyword=3, per_other_word=1, seed=3, log=lambda *a: None)
    names = lambda clips: {word: [Path(p).name for p in paths] for word, paths in clips.items()}  # noqa: E731
    assert again == summary and names(SpeechCommands(tmp_path / "again").clips) == names(data.clips)  # seeded
    with pytest.raises(DataError, match="not empty"):
        synthesize(tmp_path / "synth", per_keyword=1)


def test_extra_training_clips_join_the_training_split_only(tmp_path):
    real = make_speech_commands(tmp_path / "real", speakers=4)
    extra = make_speech_commands(tmp_path / "extra", speakers=3, seed=1)
    for name in ("validation_list.txt", "testing_list.txt"):  # every extra clip trains
        (extra / name).write_text("")
    cfg = dict(data_root=str(real), preset="small", task="kws12", epochs=1, batch_size=4, augment=False,
               sample_rate=4000, cache_dir=str(tmp_path / "cache"), model_overrides={"d_model": 8, "depth": 1})
    alone = train(TrainConfig(out=str(tmp_path / "a"), **cfg), log=lambda *a: None)
    joined = train(TrainConfig(out=str(tmp_path / "b"), extra_train=[str(extra)], **cfg), log=lambda *a: None)
    clips = lambda run: json.loads((run / "metrics.jsonl").read_text())["clips"]
    assert clips(joined) == clips(alone) + 30 + 3  # 10 keywords x 3 speakers, and 10% _unknown_; no extra silence
    stats = lambda run: json.loads((run / "best" / "config.json").read_text())["config"]["input_std"]
    assert stats(joined) == stats(alone)  # input statistics stay the real clips'
