import collections
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mrconv_audio.data import AudioError, SpeechCommands, fit_length, load_audio, resample
from mrconv_audio.data.augment import AugmentConfig, Augmenter
from mrconv_audio.data.cache import load_split
from mrconv_audio.data.speech_commands import SILENCE, UNKNOWN, DataError, read_list
from speech_tree import KEYWORDS, make_speech_commands

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def tree(tmp_path):
    return make_speech_commands(tmp_path / "sc", speakers=6)


def test_reader_splits_follow_the_list_files(tree):
    data = SpeechCommands(tree)
    assert data.version == "0.01"  # no v0.02-only words in the tiny tree
    assert set(data.words) == set(KEYWORDS + ["bed", "cat"])
    train, val, test = (data.word_clips(s) for s in ("train", "validation", "test"))
    assert len(val) == len(test) == 12 and len(train) == 48
    assert all("/00000000_" in p for p, _ in val) and all("/00000001_" in p for p, _ in test)
    assert not {p for p, _ in train} & {p for p, _ in val + test}


def test_kws12_has_silence_and_unknown_balanced(tree):
    data = SpeechCommands(tree)
    examples = data.examples("kws12", "train")
    counts = collections.Counter(e.label for e in examples)
    assert counts["yes"] == 4 and counts[UNKNOWN] == 4  # ceil(10% of 40 keyword clips)
    assert counts[SILENCE] == 4
    assert all(e.path.startswith("_background_noise_/") and e.frames == 16000 for e in examples if e.label == SILENCE)
    # Noise segments are split disjointly between train, validation and test.
    segs = {s: {(e.path, e.offset) for e in data.noise_segments(s)} for s in ("train", "validation", "test")}
    assert sum(len(v) for v in segs.values()) == 24 and not segs["train"] & segs["test"]
    sc35 = data.examples("sc35", "train")
    assert {e.label for e in sc35} == set(KEYWORDS + ["bed", "cat"])


def test_real_subset_layout_reads():
    root = SHARED / "speech_commands_subset"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    data = SpeechCommands(root)
    assert data.version == "0.02" and len(data.words) == 35
    test = data.examples("kws12", "test")
    assert len(test) > 300 and {e.label for e in test} == set(KEYWORDS + [SILENCE, UNKNOWN])


def test_official_v002_lists_parse():
    folder = SHARED / "speech_commands_lists"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    val, test = read_list(folder / "v0.02_validation_list.txt"), read_list(folder / "v0.02_testing_list.txt")
    assert len(val) == 9981 and len(test) == 11005  # the v0.02 release's split sizes
    assert not set(val) & set(test)
    assert len({p.split("/")[0] for p in test}) == 35


def test_missing_list_file_is_named(tree):
    os.remove(tree / "testing_list.txt")
    with pytest.raises(DataError, match="testing_list.txt: missing"):
        SpeechCommands(tree)


def test_malformed_list_entry_is_named(tree):
    (tree / "validation_list.txt").write_text("yes/a_nohash_0.wav\nnot a path\n")
    with pytest.raises(DataError, match="validation_list.txt: entry 'not a path'"):
        SpeechCommands(tree)


def test_empty_label_folder_is_a_counted_warning(tree):
    (tree / "wow").mkdir()
    data = SpeechCommands(tree)
    assert "wow" not in data.words
    assert any("wow: label folder with no .wav clips" in w for w in data.warnings)


def test_bad_clips_are_skipped_counted_and_named(tree, tmp_path):
    bad = {
        "yes/empty_nohash_0.wav": b"",
        "no/text_nohash_0.wav": b"this is a text file, not audio\n",
    }
    for rel, content in bad.items():
        (tree / rel).write_bytes(content)
    good = tree / "up/00000002_nohash_0.wav"
    (tree / "up/trunc_nohash_0.wav").write_bytes(good.read_bytes()[:30])  # header cut short
    sf.write(tree / "down/zero_nohash_0.wav", np.zeros(0, np.float32), 16000)  # valid header, no samples
    data = SpeechCommands(tree)
    split = load_split(data, "kws12", "train", cache_dir=tmp_path / "cache", log=lambda *a: None)
    skipped = {s["path"]: s["reason"] for s in split.skipped}
    assert set(skipped) == {"yes/empty_nohash_0.wav", "no/text_nohash_0.wav", "up/trunc_nohash_0.wav",
                            "down/zero_nohash_0.wav"}
    assert "contains no samples" in skipped["down/zero_nohash_0.wav"]
    assert all(str(tree) in reason for reason in skipped.values())
    assert len(split) == len(data.examples("kws12", "train")) - 4  # every good clip is still there


def test_load_audio_mixes_stereo_and_rejects_nan(tmp_path):
    stereo = np.stack([np.full(100, 0.5), np.full(100, -0.1)], 1).astype(np.float32)
    sf.write(tmp_path / "s.wav", stereo, 48000, subtype="FLOAT")
    x, rate = load_audio(tmp_path / "s.wav")
    assert rate == 48000 and x.shape == (100,) and np.allclose(x, 0.2)
    stereo[5, 0] = np.nan
    sf.write(tmp_path / "n.wav", stereo, 48000, subtype="FLOAT")
    with pytest.raises(AudioError, match="n.wav: contains NaN"):
        load_audio(tmp_path / "n.wav")
    with pytest.raises(AudioError, match="limit is 0.001 s"):
        load_audio(tmp_path / "s.wav", max_seconds=0.001)


def test_resample_and_fit_length():
    t = torch.arange(44100) / 44100
    x = torch.sin(2 * torch.pi * 440 * t)
    y = resample(x, 44100, 16000)
    assert y.shape[-1] == 16000
    t16 = torch.arange(16000) / 16000
    assert (y[100:-100] - torch.sin(2 * torch.pi * 440 * t16)[100:-100]).abs().max() < 1e-2
    assert fit_length(torch.ones(5), 8).tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert fit_length(torch.ones(10), 3).shape == (3,)


def test_cache_is_reused_and_rebuilt_when_the_source_changes(tree, tmp_path):
    data, cache = SpeechCommands(tree), tmp_path / "cache"
    messages = []
    first = load_split(data, "kws12", "validation", cache_dir=cache, log=messages.append)
    again = load_split(SpeechCommands(tree), "kws12", "validation", cache_dir=cache, log=messages.append)
    assert len(messages) == 1 and isinstance(again.audio, np.memmap)
    np.testing.assert_array_equal(first.audio, again.audio)
    # Stored as int16, but the samples are those of the WAV file.
    wav, _ = sf.read(tree / first.paths[0], dtype="int16")
    np.testing.assert_array_equal(first.audio[0, : len(wav)], wav)
    # Rewrite one clip: the cache must notice.
    path = tree / first.paths[0]
    sf.write(path, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    os.utime(path, ns=(1, 1))
    rebuilt = load_split(SpeechCommands(tree), "kws12", "validation", cache_dir=cache, log=messages.append)
    assert len(messages) == 2 and not rebuilt.audio[0].any()


def test_cache_resamples_to_the_training_rate(tree, tmp_path):
    split = load_split(SpeechCommands(tree), "kws12", "test", sample_rate=8000, cache_dir=tmp_path, log=lambda *a: 0)
    assert split.audio.shape[1] == 8000 and split.sample_rate == 8000


def test_augmentation_is_seeded_and_does_what_it_says():
    x = torch.zeros(4, 1000)
    x[:, 400:600] = 0.5
    noise = 0.1 * torch.randn(3, 1000)
    labels = torch.tensor([0, 1, 2, 2])

    def run(seed, **cfg):
        return Augmenter(AugmentConfig(**cfg), noise, 1000, silence_label=2,
                         generator=torch.Generator().manual_seed(seed))(x.clone(), labels)

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    shifted = run(0, noise_prob=0, gain_db=(0, 0), speed=None, shift_seconds=0.1)
    moved = [int(row.nonzero()[0]) - 400 for row in shifted]
    assert all(abs(m) <= 100 for m in moved) and len(set(moved)) > 1
    assert torch.allclose(shifted.sum(1), x.sum(1))  # shifting keeps the whole word inside the clip
    noisy = run(0, noise_prob=1.0, snr_db=(10, 10), gain_db=(0, 0), speed=None, shift_seconds=0)
    signal_power = x[0].square().mean()
    added = (noisy[0] - x[0]).square().mean()
    assert torch.isclose(10 * torch.log10(signal_power / added), torch.tensor(10.0), atol=0.01)
    assert torch.equal(noisy[2], x[2])  # silence examples get no extra noise
    fast = Augmenter.change_speed(torch.arange(10.0)[None], torch.tensor([2.0]))
    assert fast[0].tolist() == [0, 2, 4, 6, 8, 0, 0, 0, 0, 0]
