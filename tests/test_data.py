import collections
import json
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
    assert all(p.startswith(str(tree)) for p, _ in train)
    assert not {p for p, _ in train} & {p for p, _ in val + test}


def test_kws12_has_silence_and_unknown_balanced(tree):
    data = SpeechCommands(tree)
    examples = data.examples("kws12", "train")
    counts = collections.Counter(e.label for e in examples)
    assert counts["yes"] == 4 and counts[UNKNOWN] == 4  # ceil(10% of 40 keyword clips)
    assert counts[SILENCE] == 4
    assert all("/_background_noise_/" in e.path and e.frames == 16000 for e in examples if e.label == SILENCE)
    everything = data.examples("kws12", "train", unknown_fraction=None)
    assert collections.Counter(e.label for e in everything)[UNKNOWN] == 8  # every bed and cat clip of the split
    sc35 = data.examples("sc35", "train")
    assert {e.label for e in sc35} == set(KEYWORDS + ["bed", "cat"])


def test_each_noise_recording_goes_whole_to_one_split(tree):
    """Silence heard in training (as _silence_ or mixed in by augmentation) must never be heard in validation or
    test: every split's segments come from recordings of its own."""
    data = SpeechCommands(tree)
    splits = ("train", "validation", "test")
    files = {s: {e.path for e in data.noise_segments(s)} for s in splits}
    assert all(len(files[s]) == 1 for s in splits)  # three 12 s recordings, one each
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not files[a] & files[b]
    assert sum(len(data.noise_segments(s)) for s in splits) == 36


def noise_source(kind: int, rng, rate=16000) -> np.ndarray:
    """One second of one of six noises that differ in spectral shape (not level)."""
    white = rng.standard_normal(rate + 64)
    if kind == 0:
        x = white
    elif kind == 1:  # brown-ish: integrated
        x = np.cumsum(white) - np.convolve(np.cumsum(white), np.ones(64) / 64, "same")
    elif kind == 2:  # high-passed
        x = np.diff(white, 2)
    elif kind == 3:  # mains hum and harmonics
        t = np.arange(rate + 64) / rate
        x = sum(np.sin(2 * np.pi * 50 * h * t + h) / h for h in range(1, 8)) + 0.01 * white
    elif kind == 4:  # a band around 2 kHz
        t = np.arange(rate + 64) / rate
        x = np.convolve(white, np.hanning(16) * np.cos(2 * np.pi * 2000 * np.arange(16) / rate), "same")
    else:  # a smoothed, low band
        x = np.convolve(white, np.hanning(24), "same")
    x = x[:rate]
    return (x / np.abs(x).max() * 10 ** rng.uniform(-2, -0.5)).astype(np.float32)


def test_noise_slices_without_source_names_are_grouped_by_sound(tmp_path):
    """The subset's noise is 1 s slices named silence_N.wav: the source recording is not in the name."""
    root = make_speech_commands(tmp_path / "sc", speakers=3, noise_files=0)
    rng = np.random.default_rng(0)
    (root / "_background_noise_").mkdir()
    source_of = {}
    for i, kind in enumerate(rng.permutation(np.repeat(np.arange(6), [20, 12, 10, 8, 8, 6]))):
        path = root / "_background_noise_" / f"silence_{i}.wav"
        sf.write(path, noise_source(int(kind), rng), 16000, subtype="PCM_16")
        source_of[str(path)] = int(kind)
    data = SpeechCommands(root)
    split_of_source = collections.defaultdict(set)
    for split in ("train", "validation", "test"):
        for e in data.noise_segments(split):
            split_of_source[source_of[e.path]].add(split)
    assert all(len(splits) == 1 for splits in split_of_source.values()), dict(split_of_source)
    assert {s for splits in split_of_source.values() for s in splits} == {"train", "validation", "test"}


def test_flac_clips_and_several_roots_join(tmp_path):
    wav = make_speech_commands(tmp_path / "a", speakers=4)
    flac = make_speech_commands(tmp_path / "b", speakers=4, suffix=".flac", first_speaker=10, noise_files=0, seed=1)
    both = SpeechCommands([wav, flac])
    alone = {root: SpeechCommands(root) for root in (wav, flac)}
    for split in ("train", "validation", "test"):
        assert sorted(both.word_clips(split)) == sorted(alone[wav].word_clips(split) + alone[flac].word_clips(split))
        assert both.noise_segments(split) == alone[wav].noise_segments(split)  # noise from the root that has it
    assert all(p.endswith(".flac") for p, _ in alone[flac].word_clips("test"))
    split = load_split(both, "kws12", "test", cache_dir=tmp_path / "cache", log=lambda *a: None)
    row = split.paths.index(str(flac / "yes/0000000b_nohash_0.flac"))
    samples, _ = sf.read(flac / "yes/0000000b_nohash_0.flac", dtype="int16")
    np.testing.assert_array_equal(split.audio[row, : len(samples)], samples)
    with pytest.raises(DataError, match="given twice"):
        SpeechCommands([wav, tmp_path / "a"])


def test_real_subset_and_more_keep_each_speaker_in_one_split():
    roots = [SHARED / "speech_commands_subset", SHARED / "speech_commands_more"]
    if not all(r.is_dir() for r in roots):
        pytest.skip(f"{roots} not present")
    data = SpeechCommands(roots)
    split_of_speaker = collections.defaultdict(set)
    for split in ("train", "validation", "test"):
        for path, _ in data.word_clips(split):
            split_of_speaker[Path(path).name.split("_nohash_")[0]].add(split)
    assert len(split_of_speaker) > 1800
    assert all(len(s) == 1 for s in split_of_speaker.values())
    assert sum(p.endswith(".flac") for p, _ in data.word_clips("train")) > 6000


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
    assert any("wow: label folder with no .wav or .flac clips" in w for w in data.warnings)


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
    assert set(skipped) == {str(tree / p) for p in ["yes/empty_nohash_0.wav", "no/text_nohash_0.wav",
                                                     "up/trunc_nohash_0.wav", "down/zero_nohash_0.wav"]}
    assert "contains no samples" in skipped[str(tree / "down/zero_nohash_0.wav")]
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


@pytest.mark.parametrize("damage", ["truncated", "pickled", "wrong shape", "index"])
def test_a_damaged_cache_entry_is_named_and_rebuilt(tree, tmp_path, damage):
    import pickle

    cache = tmp_path / "cache"
    first = load_split(SpeechCommands(tree), "kws12", "validation", cache_dir=cache, log=lambda *a: None)
    expected = np.array(first.audio)
    audio_path = next(cache.glob("*.npy"))
    if damage == "truncated":
        audio_path.write_bytes(audio_path.read_bytes()[:-1000])
    elif damage == "pickled":  # a pickle stream where the .npy was: never unpickled
        audio_path.write_bytes(pickle.dumps({"audio": [1, 2, 3]}))
    elif damage == "wrong shape":
        np.save(audio_path, np.zeros((3, 5), np.int16))
    else:
        audio_path.with_suffix(".json").write_text("{truncated")
    messages = []
    again = load_split(SpeechCommands(tree), "kws12", "validation", cache_dir=cache, log=messages.append)
    assert any(str(audio_path.with_suffix(".json" if damage == "index" else ".npy")) in m and "rebuilding" in m
               for m in messages), messages
    np.testing.assert_array_equal(np.array(again.audio), expected)


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



def test_speed_perturbation_is_band_limited():
    rate = 16000
    t = torch.arange(rate) / rate
    x = torch.stack([torch.sin(2 * torch.pi * 1000 * t), torch.sin(2 * torch.pi * 7900 * t)])
    fast = Augmenter.change_speed(x, torch.tensor([1.1, 1.1]))
    spectrum = torch.fft.rfft(fast[:, :14000] * torch.hann_window(14000)).abs()  # the part that still holds sound
    freqs = torch.fft.rfftfreq(14000, 1 / rate)
    assert abs(freqs[spectrum[0].argmax()] - 1100) < 2  # 1.1x faster is 1.1x higher
    # 7.9 kHz played 1.1x faster is 8.69 kHz, above the Nyquist frequency: it must be filtered out, not folded back
    # to 7.31 kHz (linear interpolation kept it at 40% of the in-band tone's peak).
    assert spectrum[1].max() < 0.05 * spectrum[0].max()
    assert fast.shape == x.shape and not fast[:, 14600:].any()  # 1 s / 1.1 of sound, then zeros


def test_bad_background_noise_is_skipped_and_listed_never_silence(tree, tmp_path):
    from bad_inputs import fifo_guard

    noise = tree / "_background_noise_"
    nan = (0.05 * np.random.default_rng(1).standard_normal(12 * 16000)).astype(np.float32)
    nan[5000:6000] = np.nan  # a 12 s recording: its segments would be _silence_ examples
    sf.write(noise / "nan_noise.wav", nan, 16000, subtype="FLOAT")
    (noise / "garbage.wav").write_bytes(b"RIFF garbage")
    os.mkfifo(noise / "pipe.wav")
    data = SpeechCommands(tree)
    with fifo_guard(noise / "pipe.wav") as opened:
        segments = [s for split in ("train", "validation", "test") for s in data.noise_segments(split)]
    assert not opened, "the FIFO was opened (it would hang without a writer)"
    assert {Path(s.path).name for s in segments} == {"noise_0.wav", "noise_1.wav", "noise_2.wav"}
    reasons = {Path(s["path"]).name: s["reason"] for s in data.skipped}
    assert set(reasons) == {"nan_noise.wav", "garbage.wav", "pipe.wav"}
    assert "NaN" in reasons["nan_noise.wav"] and "not a readable audio file" in reasons["garbage.wav"]
    assert "not a regular file (a FIFO)" in reasons["pipe.wav"]
    assert all(str(noise) in r for r in reasons.values())


def test_clips_that_are_not_regular_files_or_have_non_utf8_names_are_listed(tree, tmp_path):
    from bad_inputs import fifo_guard

    name = os.fsdecode(b"caf\xe9_nohash_0.wav")  # Latin-1, not UTF-8
    with open(tree / "yes" / name, "wb") as f:
        sf.write(f, np.zeros(16000, np.float32), 16000, format="WAV")
    os.mkfifo(tree / "no" / "pipe_nohash_0.wav")
    (tree / "up" / "folder_nohash_0.wav").mkdir()
    with fifo_guard(tree / "no" / "pipe_nohash_0.wav") as opened:
        data = SpeechCommands(tree)
        split = load_split(data, "kws12", "train", cache_dir=tmp_path / "cache", log=lambda *a: None)
    assert not opened
    assert len(split) == len(data.examples("kws12", "train"))  # the good clips, all of them
    listed = {s["path"]: s["reason"] for s in data.skipped}
    assert set(listed) == {f"{tree}/yes/caf\\xe9_nohash_0.wav", f"{tree}/no/pipe_nohash_0.wav",
                           f"{tree}/up/folder_nohash_0.wav"}
    assert "not valid UTF-8" in listed[f"{tree}/yes/caf\\xe9_nohash_0.wav"]
    json.dumps(data.skipped).encode("utf-8")  # printable, writable: no surrogates left


def test_a_clip_beyond_full_scale_is_scaled_back_not_clipped_in_the_cache(tree, tmp_path):
    t = np.arange(16000) / 16000
    clean = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    sf.write(tree / "yes" / "loud_nohash_0.wav", clean * 32768, 16000, subtype="FLOAT")  # integer PCM as float
    split = load_split(SpeechCommands(tree), "kws12", "train", cache_dir=tmp_path / "cache", log=lambda *a: None)
    row = split.paths.index(str(tree / "yes" / "loud_nohash_0.wav"))
    got = split.waveforms(np.array([row]))[0].numpy()
    expected = clean / np.abs(clean).max()  # peak 1, its shape kept
    np.testing.assert_allclose(got, np.clip(expected, -1, 32767 / 32768), atol=1 / 32768)


def test_a_list_file_that_is_not_utf8_is_named(tree):
    (tree / "testing_list.txt").write_bytes(b"yes/caf\xe9_nohash_0.wav\n")
    with pytest.raises(DataError, match=r"testing_list.txt: not UTF-8 text"):
        SpeechCommands(tree)


def test_a_clip_or_noise_file_too_long_to_decode_is_refused_by_its_header(tree, tmp_path):
    from mrconv_audio.data.cache import MAX_CLIP_SECONDS
    from mrconv_audio.data.speech_commands import MAX_NOISE_SECONDS

    rate = 1000  # long files, small on disk
    sf.write(tree / "yes" / "long_nohash_0.wav", np.zeros((MAX_CLIP_SECONDS + 1) * rate, np.int16), rate)
    sf.write(tree / "_background_noise_" / "long.wav", np.zeros((MAX_NOISE_SECONDS + 1) * rate, np.int16), rate)
    data = SpeechCommands(tree)
    split = load_split(data, "kws12", "train", cache_dir=tmp_path / "cache", log=lambda *a: None)
    reasons = {Path(s["path"]).name: s["reason"] for s in split.skipped + data.skipped}
    assert f"the limit is {MAX_CLIP_SECONDS} s" in reasons["long_nohash_0.wav"]
    assert f"the limit is {MAX_NOISE_SECONDS} s" in reasons["long.wav"]
