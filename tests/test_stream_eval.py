import json
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from mrconv_audio.cli import main
from mrconv_audio.data.cache import CachedSplit
from mrconv_audio.stream_eval import (Event, build_stream, evaluate_stream, loud_span, operating_point, record, replay,
                                      score)
from mrconv_audio.streaming import KeywordSpotter, StreamConfig
from speech_tree import make_speech_commands
from tone_model import HIGH_HZ, LOW_HZ, ToneModel

RATE = 16000
LABELS = ToneModel.labels  # low, high, _silence_, _unknown_
UNKNOWN_HZ, HUM_HZ = 700.0, 3000.0


def tone_clip(hz, start, seconds=0.4, amplitude=0.3, rate=RATE):
    """One 1 s int16 clip: a tone with 20 ms ramps from `start` s, digital silence around it."""
    x = np.zeros(rate)
    t = np.arange(round(seconds * rate)) / rate
    ramp = np.minimum(1, np.minimum(t, seconds - t) / 0.02)
    i = round(start * rate)
    x[i : i + len(t)] = amplitude * ramp * np.sin(2 * math.pi * hz * t)
    return np.round(x * 32767).astype(np.int16)


def tone_split(per_word=6, unknown=3, silence=3, seed=0, hum=False):
    """A hand-made CachedSplit: low and high tones at random places in their clips, a third tone for _unknown_,
    white noise (or a 3 kHz hum) for _silence_."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for _ in range(per_word):
        for name, hz in [("low", LOW_HZ), ("high", HIGH_HZ)]:
            rows.append(tone_clip(hz, rng.uniform(0.05, 0.55)))
            labels.append(LABELS.index(name))
    for _ in range(unknown):
        rows.append(tone_clip(UNKNOWN_HZ, rng.uniform(0.05, 0.55)))
        labels.append(LABELS.index("_unknown_"))
    for _ in range(silence):
        noise = tone_clip(HUM_HZ, 0, seconds=1.0, amplitude=0.05) if hum else \
            np.round(0.02 * rng.standard_normal(RATE) * 32767).astype(np.int16)
        rows.append(noise)
        labels.append(LABELS.index("_silence_"))
    return CachedSplit(np.stack(rows), np.array(labels), list(LABELS), [f"clip{i}" for i in range(len(rows))], [],
                       RATE)


def test_clips_are_placed_sample_exact_with_their_gains_and_loud_spans():
    split = tone_split()
    stream = build_stream(split, seed=3, floor_dbfs=None)
    covered = np.zeros(len(stream.audio), bool)
    for e in stream.events:
        clip = split.audio[e.clip].astype(np.float32) / np.float32(32768) * np.float32(10 ** (e.gain_db / 20))
        assert np.array_equal(stream.audio[e.offset : e.offset + e.length], np.clip(clip, -1, 1))
        assert e.label == LABELS[split.labels[e.clip]] and -10 <= e.gain_db <= 6
        covered[e.offset : e.offset + e.length] = True
        if e.kind != "silence":  # the loud span is the tone: its first and last non-zero samples, to 10 ms
            nonzero = np.flatnonzero(split.audio[e.clip])
            assert abs(e.start - (e.offset + nonzero[0]) / RATE) <= 0.01
            assert abs(e.end - (e.offset + nonzero[-1] + 1) / RATE) <= 0.01
    assert not stream.audio[~covered].any()  # nothing but the clips without a floor
    gaps = np.diff([e.offset for e in stream.events]) / RATE - 1.0
    assert gaps.min() >= 0.5 - 1e-9 and gaps.max() <= 3.0 + 1e-9
    assert len(stream.audio) - (stream.events[-1].offset + RATE) >= 1.5 * RATE  # a gap and the tail at the end


def test_loud_span_trims_near_silence():
    clip = np.full(16000, 1e-4)
    clip[4000:8960] = 0.5  # on 10 ms frame boundaries (160 samples)
    assert loud_span(clip, 16000) == (4000, 8960)
    clip[8960:8970] = 0.5  # part of a frame is loud: the whole frame counts
    assert loud_span(clip, 16000) == (4000, 9120)
    assert loud_span(np.zeros(100), 16000) == (0, 100)


def test_streams_are_seeded_and_use_every_clip():
    split = tone_split()
    a, b, c = build_stream(split, seed=1), build_stream(split, seed=1), build_stream(split, seed=2)
    assert np.array_equal(a.audio, b.audio) and a.events == b.events
    assert [e.clip for e in a.events] != [e.clip for e in c.events]
    assert sorted(e.clip for e in a.events) == list(range(len(split))) and a.passes == 1
    minutes = 2 * a.seconds / 60  # about two passes: each pass uses every clip once, freshly shuffled
    long = build_stream(split, seed=1, minutes=minutes)
    assert long.seconds >= minutes * 60 and long.passes >= 2
    first = [e.clip for e in long.events[: len(split)]]
    second = [e.clip for e in long.events[len(split) : 2 * len(split)]]
    assert sorted(first) == list(range(len(split))) and first != second
    short = build_stream(split, seed=1, minutes=0.1)  # a prefix of the first pass
    assert [e.clip for e in short.events] == [e.clip for e in a.events[: len(short.events)]]
    assert len(short.events) < len(split)


def test_noise_floor_comes_from_the_silence_clips_at_its_level():
    split = tone_split(hum=True)
    stream = build_stream(split, seed=0, floor_dbfs=-40)
    first = stream.events[0].offset
    gap = stream.audio[:first]
    assert first >= 0.5 * RATE
    assert abs(20 * np.log10(np.sqrt(np.mean(np.square(gap.astype(np.float64))))) + 40) < 0.5
    spectrum = np.abs(np.fft.rfft(gap[:8000]))
    assert abs(np.fft.rfftfreq(8000, 1 / RATE)[np.argmax(spectrum)] - HUM_HZ) < 5


def test_a_clean_tone_stream_has_no_false_accepts_and_no_misses():
    split = tone_split(per_word=8)
    report = evaluate_stream(ToneModel(), build_stream(split), StreamConfig(hop_seconds=0.1), log=lambda *_: None)
    s = report.at_threshold
    assert s.keyword_events == 16 and s.misses == 0 and s.miss_rate == 0
    assert s.false_accepts == 0 and s.fa_per_hour == 0 and set(s.fa_by_context.values()) == {0}
    assert report.best is not None and report.best.miss_rate == 0


def hard_stream():
    """Tones from far below the noise floor to loud, noise above the energy gate: a threshold that matters."""
    split = tone_split(per_word=10, seed=1)
    stream = build_stream(split, seed=4, gain_db=(-45, 0), floor_dbfs=-45)
    return split, stream


def test_replaying_a_threshold_equals_running_the_engine_at_it():
    _, stream = hard_stream()
    cfg = StreamConfig(hop_seconds=0.1, energy_gate_dbfs=-42)
    trace = record(ToneModel(), stream.audio, RATE, cfg)
    seen = set()
    for threshold in (0.3, 0.5, 0.6, 0.8, 0.95):
        live = KeywordSpotter(ToneModel(), RATE, replace(cfg, threshold=threshold))
        found = []
        for i in range(0, len(stream.audio), 1234):  # blocks unrelated to the hop
            found += [r.detection for r in live.push(stream.audio[i : i + 1234]) if r.detection is not None]
        replayed = replay(trace, replace(cfg, threshold=threshold))
        key = lambda ds: [(d.label, d.time, d.score) for d in ds]
        assert key(replayed) == key(found) and found
        seen.add(len(found))
    assert len(seen) > 2  # the thresholds did change the detections
    assert [(d.label, d.time) for d in replay(trace, cfg)] == [(d.label, d.time) for d in trace.detections]


def test_the_curve_is_monotone_in_the_threshold():
    _, stream = hard_stream()
    report = evaluate_stream(ToneModel(), stream, StreamConfig(hop_seconds=0.1), log=lambda *_: None)
    misses = [s.miss_rate for s in report.curve]
    fas = [s.fa_per_hour for s in report.curve]
    assert [s.threshold for s in report.curve] == sorted(s.threshold for s in report.curve)
    assert all(a <= b for a, b in zip(misses, misses[1:])) and misses[0] < misses[-1]
    assert all(a >= b for a, b in zip(fas, fas[1:]))


def event(label, start, end, clip_start=None, clip_end=None, kind=None):
    clip_start = start - 0.2 if clip_start is None else clip_start
    clip_end = clip_start + 1 if clip_end is None else clip_end
    kind = kind or {"_unknown_": "unknown", "_silence_": "silence"}.get(label, "keyword")
    return Event(label, kind, start, end, round(clip_start * 1000), round((clip_end - clip_start) * 1000), 0, 0.0, 1000)


def det(label, time):
    return SimpleNamespace(label=label, time=time)


def test_scoring_counts_hits_misses_and_false_accepts_by_context():
    events = [event("low", 10.3, 10.6), event("high", 20.3, 20.5), event("_unknown_", 30.2, 30.5),
              event("_silence_", 40.0, 41.0, 40.0), event("low", 50.3, 50.6, clip_start=49.5),
              event("high", 60.2, 60.4)]
    detections = [
        det("low", 9.9),  # 0.4 s before the span: inside the 0.5 s tolerance -> hit
        det("low", 10.5),  # the same word again -> FA same_keyword
        det("high", 20.4), det("low", 20.45),  # hit, then a wrong label during a keyword -> FA other_keyword
        det("low", 30.3),  # unknown word -> FA unknown
        det("high", 40.5),  # noise clip -> FA silence
        det("low", 45.0),  # nothing playing -> FA gap
        det("low", 49.7),  # 0.6 s before the span, but inside its clip (49.5 .. 50.5) -> FA same_keyword
        # "low" at 50.3 missed; "high" at 60.2 missed
    ]
    s = score(detections, events, seconds=1800, tolerance=0.5, threshold=0.5)
    assert (s.keyword_events, s.hits, s.misses) == (4, 2, 2)
    assert s.miss_rate == 0.5 and s.misses_by_label == {"high": 1, "low": 1}
    assert s.false_accepts == 6 and s.fa_per_hour == 12.0 and s.hours == 0.5
    assert s.fa_by_context == {"other_keyword": 1, "same_keyword": 2, "unknown": 1, "silence": 1, "gap": 1}
    # Order of the list does not matter; the earliest detection takes the event.
    assert score(detections[::-1], events, 1800, 0.5) == replace(s, threshold=None)


def test_scoring_edges_and_the_operating_point():
    events = [event("low", 1.0, 1.5), event("low", 2.2, 2.6, clip_start=2.0, clip_end=3.2)]
    # widened spans: 0.5..2.0 and 1.7..3.1
    # 1.9 is within reach of both; it takes the first (whose reach ends first), so 2.9 can take the second
    s = score([det("low", 1.9), det("low", 2.9)], events, 3600, tolerance=0.5)
    assert s.hits == 2 and s.false_accepts == 0
    s = score([det("low", 0.49), det("low", 3.11)], events, 3600, tolerance=0.5)  # just outside: FA, miss
    assert s.hits == 0 and s.misses == 2 and s.fa_by_context["gap"] == 1 and s.fa_by_context["same_keyword"] == 1
    nothing = score([], [], 3600)
    assert math.isnan(nothing.miss_rate) and nothing.fa_per_hour == 0
    curve = [replace(s, threshold=t, fa_per_hour=fa, miss_rate=m)
             for t, fa, m in [(0.3, 9.0, 0.01), (0.5, 1.0, 0.08), (0.55, 1.0, 0.08), (0.6, 2.0, 0.08), (0.7, 0.0, 0.2)]]
    assert operating_point(curve).threshold == 0.55  # lowest miss with <= 2 FA/h; ties: fewer FA/h, higher threshold
    assert operating_point(curve, max_fa_per_hour=0.5).threshold == 0.7
    assert operating_point(curve[:1]) is None


def test_evaluate_stream_cli_on_a_speech_commands_tree(tmp_path, capsys):
    tree = make_speech_commands(tmp_path / "sc", speakers=3)
    out, plot = tmp_path / "stream.json", tmp_path / "stream.png"
    rc = main(["evaluate", "--stream", "--data-root", str(tree), "--split", "test", "--minutes", "0.1",
               "--hop", "0.25", "--threshold", "0.5", "--seed", "1", "--json", str(out), "--plot", str(plot),
               "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["task"] == "kws12" and result["split"] == "test" and result["data_root"] == [str(tree)]
    assert result["model"].endswith("kws12-mrconv")
    stream = result["stream"]
    assert 6 <= stream["seconds"] <= 6 + 1 + 3 + 1 + 1e-6 and stream["seed"] == 1 and stream["minutes"] == 0.1
    at = result["at_threshold"]
    assert at["threshold"] == 0.5 and at["keyword_events"] == stream["clips"].get("keyword", 0) >= 1
    assert at["hits"] + at["misses"] == at["keyword_events"]
    assert at["false_accepts"] == sum(at["fa_by_context"].values())
    assert math.isclose(at["fa_per_hour"], at["false_accepts"] / stream["hours"])
    assert len(result["curve"]) == 70 and result["curve"][0]["threshold"] == 0.3
    assert set(result["curve"][0]) == {"threshold", "fa_per_hour", "miss_rate", "false_accepts", "misses"}
    assert result["engine"]["hop_seconds"] == 0.25 and result["engine"]["threshold"] == 0.5
    assert result["target"] == {"max_fa_per_hour": 2.0, "max_miss_rate": 0.1, "met": result["target"]["met"]}
    assert "operating_point" in result and "tolerance_seconds" in result
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "FA/h" in capsys.readouterr().out


def test_stream_needs_a_data_root(tmp_path, capsys):
    assert main(["evaluate", "--stream", "--folder", str(tmp_path)]) == 2
    assert "--stream needs --data-root" in capsys.readouterr().err
