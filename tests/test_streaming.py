import threading

import numpy as np
import pytest
import torch

from helpers import randomize_batchnorms, spoken_words
from mrconv_audio import MRConvClassifier, MRConvConfig
from mrconv_audio.conditioning import remove_dc
from mrconv_audio.streaming import (ChunkLag, KeywordSpotter, LagMonitor, NonFiniteScores, StreamConfig, StreamWorker,
                                    listen_fixes)
from tone_model import ToneModel, tone_stream


def run(spotter, stream, block=1600):
    results = []
    for i in range(0, len(stream), block):
        results += spotter.push(stream[i : i + block])
    return results


def detections(results):
    return [r.detection for r in results if r.detection is not None]


def test_one_detection_per_word_at_the_right_time():
    stream = tone_stream([(1.5, "low", 0.3), (3.5, "high", 0.3), (6.0, "low", 0.3)], seconds=8)
    spotter = KeywordSpotter(ToneModel(), 16000, StreamConfig(hop_seconds=0.1, smoothing=1))
    found = detections(run(spotter, stream))
    assert [d.label for d in found] == ["low", "high", "low"]  # refractory: each word fires once
    for d, start in zip(found, [1.5, 3.5, 6.0]):
        assert start - 0.1 <= d.time <= start + 0.4 + 0.1  # inside the 0.4 s word, give or take one hop
        assert d.score >= 0.6 and d.latency_ms > 0


def test_one_sound_heard_under_two_labels_fires_once():
    # One 0.55 s sound: a weak low tone, then a loud high one overlapping most of it. The window first reads it as
    # "low" (only its start is in), then as "high"; every window is loudest within 0.5 s of the first.
    stream = tone_stream([(1.0, "low", 0.2), (1.15, "high", 0.4)], seconds=3)
    both = StreamConfig(hop_seconds=0.1, smoothing=1, same_word_seconds=0)
    assert [d.label for d in detections(run(KeywordSpotter(ToneModel(), 16000, both), stream))] == ["low", "high"]
    once = StreamConfig(hop_seconds=0.1, smoothing=1, same_word_seconds=0.5)
    found = detections(run(KeywordSpotter(ToneModel(), 16000, once), stream))
    assert [d.label for d in found] == ["low"]
    later = tone_stream([(1.0, "low", 0.2), (2.0, "high", 0.4)], seconds=4)  # two sounds a second apart: both fire
    assert [d.label for d in detections(run(KeywordSpotter(ToneModel(), 16000, once), later))] == ["low", "high"]


def test_results_do_not_depend_on_block_size():
    stream = tone_stream([(1.2, "high", 0.2)], seconds=3)
    a = run(KeywordSpotter(ToneModel(), 16000, StreamConfig(hop_seconds=0.1)), stream, block=37)
    b = run(KeywordSpotter(ToneModel(), 16000, StreamConfig(hop_seconds=0.1)), stream, block=4000)
    assert len(a) == len(b) == 30
    for x, y in zip(a, b):
        assert x.end_time == y.end_time and np.allclose(x.probabilities, y.probabilities)


def test_thresholds_are_respected_per_class():
    stream = tone_stream([(1.0, "low", 0.3), (3.0, "high", 0.3)], seconds=5)
    strict = StreamConfig(smoothing=1, thresholds={"high": 1.0})  # "high" can never reach 1.0 with noise present
    found = detections(run(KeywordSpotter(ToneModel(), 16000, strict), stream))
    assert [d.label for d in found] == ["low"]
    with pytest.raises(ValueError, match="'banana'"):
        KeywordSpotter(ToneModel(), 16000, StreamConfig(thresholds={"banana": 0.5}))


def test_smoothing_averages_the_last_hops():
    stream = tone_stream([(1.0, "low", 0.3)], seconds=3)
    raw = run(KeywordSpotter(ToneModel(), 16000, StreamConfig(smoothing=1)), stream)
    smooth = run(KeywordSpotter(ToneModel(), 16000, StreamConfig(smoothing=3)), stream)
    for i in range(2, len(raw)):
        expected = np.mean([raw[j].probabilities for j in range(i - 2, i + 1)], axis=0)
        assert np.allclose(smooth[i].probabilities, expected, atol=1e-6)


def test_quiet_audio_is_gated():
    quiet = tone_stream([(1.0, "low", 0.0003)], seconds=3, noise=0.00001)  # about -75 dBFS
    results = run(KeywordSpotter(ToneModel(), 16000, StreamConfig(smoothing=1)), quiet)
    assert all(r.gated for r in results) and not detections(results)
    assert max(r.probabilities[0] for r in results) > 0.9  # the model did hear the tone: only the gate stopped it


@pytest.mark.parametrize("rate", [8000, 22050, 48000])
def test_any_input_rate_in_both_modes(rate):
    stream = tone_stream([(1.0, "low", 0.3)], seconds=3, rate=rate)
    for mode in ("kernel", "input"):
        spotter = KeywordSpotter(ToneModel(), rate, StreamConfig(mode=mode, smoothing=1))
        found = detections(run(spotter, stream, block=rate // 10))
        assert [d.label for d in found] == ["low"] and 0.9 <= found[0].time <= 1.5


def test_real_mrconv_model_streams_at_48k_merged():
    cfg = MRConvConfig(d_model=8, depth=2, labels=["yes", "no", "_silence_", "_unknown_"])
    model = MRConvClassifier(cfg)
    randomize_batchnorms(model)
    spotter = KeywordSpotter(model.eval(), 48000, StreamConfig(hop_seconds=0.25))
    assert model.reparameterized  # the engine merges the branches
    assert spotter.window == 48000 and spotter.hop == 12000
    results = run(spotter, (0.1 * np.random.default_rng(0).standard_normal(48000 * 2)).astype(np.float32), 4800)
    assert len(results) == 8 and all(np.isclose(r.probabilities.sum(), 1, atol=1e-5) for r in results)


def test_integer_pcm_is_scaled_before_the_channels_are_mixed():
    mono = tone_stream([(0.5, "high", 0.3)], seconds=2)
    left, right = mono, 0.5 * mono
    expected = (left + right) / 2
    int16 = np.round(np.stack([left, right], 1) * 32767).astype(np.int16)
    int32 = np.round(np.stack([left, right], 1) * 2147483647).astype(np.int32)
    uint8 = np.round(np.stack([left, right], 1) * 127 + 128).astype(np.uint8)  # 8-bit WAV: silence is 128
    np.testing.assert_allclose(KeywordSpotter.mono(int16), expected, atol=2 / 32768)
    np.testing.assert_allclose(KeywordSpotter.mono(int32), expected, atol=1e-6)
    np.testing.assert_allclose(KeywordSpotter.mono(uint8), expected, atol=2 / 128)
    assert abs(KeywordSpotter.mono(np.full(10, 128, np.uint8))).max() == 0  # centred

    # Through a model that hears level (a log-mel MRConv): the same probabilities and level as the float input.
    model = MRConvClassifier(MRConvConfig.preset("logmel", d_model=8, depth=2, labels=ToneModel.labels))
    randomize_batchnorms(model)
    model.eval()
    a = run(KeywordSpotter(model, 16000), expected.astype(np.float32))
    b = run(KeywordSpotter(model, 16000), int16)
    assert len(a) == len(b) == 8
    for x, y in zip(a, b):
        assert abs(x.rms_dbfs - y.rms_dbfs) < 0.01
        np.testing.assert_allclose(x.probabilities, y.probabilities, atol=1e-3)


def offline_probabilities(model, stream, spotter):
    """The model run on its own on every window the spotter classified (the stream's last `window` samples at each
    hop, zeros before the stream began): (hops, classes)."""
    padded = np.concatenate([np.zeros(spotter.window, np.float32), stream])
    out = []
    with torch.no_grad():
        for end in range(spotter.hop, len(stream) + 1, spotter.hop):
            window = torch.from_numpy(padded[end : end + spotter.window])[None]
            out.append(torch.softmax(model(window, sample_rate=spotter.sample_rate), -1)[0].numpy())
    return np.array(out)


def varied(seconds, rate, seed=1):
    """Noise whose level swings over 20 dB, with a tone: windows a hop apart read differently."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(len(t)) * (0.01 + 0.2 * np.abs(np.sin(2 * np.pi * 0.7 * t)))
    return (noise + 0.3 * np.sin(2 * np.pi * 440 * t) * (np.abs(t - 1.2) < 0.2)).astype(np.float32)


def conditioned(stream, rate, dc=True):
    """What the engine does to audio before its window: DC removed, clipped to [-1, 1] (varied() peaks near 1)."""
    return np.clip(remove_dc(stream, rate) if dc else stream, -1, 1)


def logmel_model(**overrides):
    model = MRConvClassifier(MRConvConfig.preset("logmel", d_model=16, depth=3, labels=ToneModel.labels, **overrides))
    randomize_batchnorms(model)
    model.reparameterize()
    with torch.no_grad():  # logits within +-3 on the windows the tests use: probabilities that move, not saturate
        stream = np.concatenate([np.zeros(16000, np.float32), varied(3, 16000)])
        logits = model(torch.from_numpy(stream).unfold(0, 16000, 4000))
        centred = logits - logits.mean(0)
        scale = centred.abs().max() / 3
        model.decoder.weight /= scale
        model.decoder.bias.sub_(logits.mean(0)).div_(scale)
    return model


@pytest.mark.parametrize("rate,hop", [(16000, 0.1), (48000, 0.1), (44100, 0.25), (22050, 0.1), (11025, 0.037)])
def test_engine_probabilities_equal_the_model_offline_on_the_same_windows(rate, hop):
    model = logmel_model()
    stream = varied(2.6, rate)
    spotter = KeywordSpotter(model, rate, StreamConfig(hop_seconds=hop, smoothing=1))
    assert spotter.frames is not None  # the incremental path
    live = np.array([r.probabilities for r in run(spotter, stream, block=rate // 30)])
    offline = offline_probabilities(model, conditioned(stream, rate), spotter)
    assert live.shape == offline.shape and len(live) == int(2.6 / hop)
    np.testing.assert_allclose(live, offline, rtol=0, atol=1e-5)
    assert np.abs(offline[1:] - offline[:-1]).max() > 1e-2  # the next hop's window would not pass for this one's


def test_engine_equals_offline_with_smoothing_across_a_gap_and_for_other_block_shapes():
    model = logmel_model(prenorm=False, block_norm="layernorm")
    rate, hop = 48000, 4800
    before, after = varied(3, rate, seed=2), varied(3, rate, seed=3)
    gap = 2 * hop + 1000  # lost audio: silence in the offline stream
    stream = np.concatenate([before, np.zeros(gap, np.float32), after])
    # lost audio is silence after DC removal, so the offline stream is compared without it
    spotter = KeywordSpotter(model, rate, StreamConfig(hop_seconds=0.1, smoothing=3, remove_dc=False))
    live = run(spotter, before, block=1000)
    spotter.skip(gap)
    live += run(spotter, after, block=1000)
    raw = offline_probabilities(model, conditioned(stream, rate, dc=False), spotter)
    ends = np.array([r.end_time for r in live])
    kept = np.round(ends * rate / hop).astype(int) - 1  # hops classified: none ends inside the gap
    assert len(kept) == len(raw) - 2 and np.isclose(ends[-1], len(stream) // hop * hop / rate)
    for n, (r, h) in enumerate(zip(live, kept)):
        first = 0 if h < len(before) // hop else max(len(before) // hop + 2, h - 2)  # smoothing restarts after a gap
        first = max(first, h - 2)
        np.testing.assert_allclose(r.probabilities, raw[first : h + 1].mean(0), atol=1e-5)


def test_shipped_model_streams_exactly_and_computes_only_new_frames():
    from mrconv_audio.cli import load_model

    model = load_model(None)
    rate = 48000
    stream = (0.05 * np.random.default_rng(3).standard_normal(3 * rate)).astype(np.float32)
    spotter = KeywordSpotter(model, rate, StreamConfig(hop_seconds=0.1, smoothing=1))
    live = run(spotter, stream[: 2 * rate], block=4800)
    before = spotter.frames.computed
    live += run(spotter, stream[2 * rate :], block=4800)
    # A 0.1 s hop brings 10 new frames; 3 more reach into the window's zero padding (2 at the start, 1 at the end).
    assert spotter.frames.computed - before == 10 * 13
    np.testing.assert_allclose([r.probabilities for r in live],
                               offline_probabilities(model, conditioned(stream, rate), spotter), atol=1e-5)


def test_a_one_second_word_fires_once():
    stream = tone_stream([(1.0, "low", 0.3)], seconds=5, tone_seconds=1.0)
    short = StreamConfig(hop_seconds=0.1, refractory_seconds=1.5)  # the earlier default
    assert len(detections(run(KeywordSpotter(ToneModel(), 16000, short), stream))) == 2
    for hop in (0.1, 0.25):
        found = detections(run(KeywordSpotter(ToneModel(), 16000, StreamConfig(hop_seconds=hop)), stream))
        assert [d.label for d in found] == ["low"]
    assert StreamConfig().refractory(1.0) == pytest.approx(2.5)  # window + longest word + 2 smoothing hops
    again = tone_stream([(1.0, "low", 0.3), (4.0, "low", 0.3)], seconds=6, tone_seconds=1.0)  # said again, 3 s later
    assert len(detections(run(KeywordSpotter(ToneModel(), 16000, StreamConfig()), again))) == 2


def test_a_hop_runs_on_one_thread_and_leaves_the_callers_setting():
    seen = []

    class Spy(ToneModel):
        def forward(self, x, sample_rate=None):
            seen.append(torch.get_num_threads())
            return super().forward(x, sample_rate)

    before = torch.get_num_threads()
    run(KeywordSpotter(Spy(), 16000, StreamConfig(hop_seconds=0.5)), np.zeros(16000, np.float32))
    assert seen == [1, 1] and torch.get_num_threads() == before
    run(KeywordSpotter(Spy(), 16000, StreamConfig(hop_seconds=0.5), threads=None), np.zeros(16000, np.float32))
    assert seen[2:] == [before, before]


class GatedTone(ToneModel):
    """ToneModel whose first hop waits for `release`: the test decides when the worker is busy."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def forward(self, x, sample_rate=None):
        assert self.release.wait(60), "the test never released the model"
        return super().forward(x, sample_rate)


def test_worker_never_blocks_the_callback_and_counts_overflow():
    model = GatedTone()
    worker = StreamWorker(KeywordSpotter(model, 16000, StreamConfig(hop_seconds=0.1)), max_seconds=1.0).start()
    block = np.zeros(1600, np.float32)
    accepted = []
    pusher = threading.Thread(target=lambda: accepted.extend(worker.push(block) for _ in range(30)))
    pusher.start()
    pusher.join(60)  # the worker is stuck in its first hop: a push that waited for it would never return
    assert not pusher.is_alive(), "push blocked while the worker was busy"
    assert accepted == [True] * 10 + [False] * 20  # 1 s of backlog, then every block is dropped and counted
    assert worker.stats.blocks == 30 and worker.stats.dropped_blocks == 20 and worker.stats.dropped_samples == 32000
    model.release.set()
    assert worker.stop(drain=True)
    assert worker.stats.hops == 10 and worker.backlog_seconds() == 0


def test_dropped_audio_advances_the_clock():
    """A tone after 1 s of dropped audio is detected at its true stream time, and the window never joins audio from
    both sides of the gap."""
    stream = tone_stream([(0.3, "low", 0.3), (3.0, "high", 0.3)], seconds=5)
    model = GatedTone()
    found = []
    worker = StreamWorker(KeywordSpotter(model, 16000, StreamConfig(hop_seconds=0.1, smoothing=1)),
                          on_result=found.append, max_seconds=1.0).start()
    blocks = stream.reshape(-1, 1600)
    pushed = [worker.push(b) for b in blocks[:20]]  # blocks 10-19 (1.0-2.0 s) find the backlog full
    assert pushed == [True] * 10 + [False] * 10
    model.release.set()
    assert worker.wait_processed(16000, timeout=60)  # the backlog has room again
    for b in blocks[20:]:  # the rest at the pace the worker takes it: nothing more is dropped
        assert worker.push(b) and worker.wait_processed(worker.stats.queued_samples, timeout=60)
    assert worker.stop(drain=True)
    assert worker.spotter.samples_seen == len(stream)
    assert [r.end_time for r in found] == pytest.approx([0.1 * i for i in range(1, 11)] + [2.1 + 0.1 * i for i in range(30)])
    labels = [(r.detection.label, r.detection.time) for r in found if r.detection]
    assert [label for label, _ in labels] == ["low", "high"]
    assert 3.0 - 0.1 <= labels[1][1] <= 3.4 + 0.1  # at the tone, not 1 s early
    # The first window after the gap holds silence where the gap was, not audio from before it.
    assert found[10].rms_dbfs < found[9].rms_dbfs - 20


def test_a_failing_recorder_does_not_cost_the_spotter_its_audio():
    stream = tone_stream([(1.0, "low", 0.3)], seconds=3)
    recorded = []

    def recorder(block):
        if len(recorded) == 12:  # the 13th block: during the tone
            recorded.append(None)
            raise OSError("No space left on device")
        recorded.append(block)

    found = []
    worker = StreamWorker(KeywordSpotter(ToneModel(), 16000, StreamConfig(hop_seconds=0.1, smoothing=1)),
                          on_result=found.append, on_audio=recorder).start()
    for block in stream.reshape(-1, 1600):
        worker.push(block)
    assert worker.stop(drain=True)
    assert worker.stats.errors == 1 and "recording: OSError: No space left" in worker.stats.last_error
    offline = run(KeywordSpotter(ToneModel(), 16000, StreamConfig(hop_seconds=0.1, smoothing=1)), stream)
    assert len(found) == len(offline) == 30
    for a, b in zip(found, offline):
        assert a.end_time == b.end_time and np.allclose(a.probabilities, b.probabilities)
    assert [d.label for d in detections(found)] == ["low"]


def test_worker_survives_a_failing_hop():
    class Broken(ToneModel):
        def forward(self, x, sample_rate=None):
            if self.calls == 1:  # the second hop fails
                self.calls += 1
                raise RuntimeError("device lost")
            return super().forward(x, sample_rate)

    seen = []
    worker = StreamWorker(KeywordSpotter(Broken(), 16000, StreamConfig(hop_seconds=0.1)), on_result=seen.append).start()
    for _ in range(5):
        worker.push(np.zeros(1600, np.float32))
    assert worker.stop()
    assert worker.stats.errors == 1 and "hop: RuntimeError: device lost" in worker.stats.last_error
    assert len(seen) == 4


def test_lag_monitor_says_how_far_behind_why_and_what_to_do():
    now = [0.0]
    monitor = LagMonitor(0.25, listen_fixes(44100, 0.25), clock=lambda: now[0])
    assert monitor.check(behind_seconds=0.2, dropped_seconds=0, hop_ms=6) is None  # keeping up
    slow = monitor.check(behind_seconds=2.4, dropped_seconds=0, hop_ms=480)
    assert "2.4 s behind real time" in slow and "each 250 ms hop takes 480 ms" in slow
    assert "--hop 0.5" in slow and "--samplerate 16000" in slow
    busy = monitor.check(behind_seconds=0.3, dropped_seconds=1.5, hop_ms=8)
    assert "1.5 s of audio dropped" in busy and "too busy" in busy
    now[0] = 5.0
    assert monitor.check(0.1, 1.5, 8) == busy  # no new drops, but still shown for a while
    now[0] = 11.0
    assert monitor.check(0.1, 1.5, 8) is None
    assert "--samplerate" not in listen_fixes(16000, 0.25)


def test_chunk_lag_compares_the_audio_received_with_the_wall_clock():
    now = [10.0]
    lag = ChunkLag(0.25, clock=lambda: now[0])
    for _ in range(20):  # 0.25 s chunks arriving every 0.25 s, processed in 6 ms: keeping up
        now[0] += 0.25
        assert lag.update(0.25, [6.0]) is None
    for _ in range(20):  # processing takes 0.5 s a chunk: each arrives 0.25 s later than the last
        now[0] += 0.5
        warning = lag.update(0.25, [500.0])
    assert "5.0 s behind real time" in warning and "each 250 ms hop takes 500 ms" in warning
    assert "Clip tab" in warning


def test_other_models_with_a_log_mel_front_end_take_the_whole_window_path():
    from mrconv_audio.frontend import LogMel

    class PeerLike(ToneModel):  # has a log-mel front end but not the MRConv layers (like the res8 peer)
        def __init__(self):
            super().__init__()
            self.frontend = LogMel()

    stream = tone_stream([(1.0, "low", 0.3)], seconds=3)
    spotter = KeywordSpotter(PeerLike(), 16000, StreamConfig(hop_seconds=0.1, smoothing=1))
    assert spotter.frames is None
    assert [d.label for d in detections(run(spotter, stream))] == ["low"]


# --- input conditioning: DC offset, beyond full scale, non-finite scores ---

WORDS = ["down", "left", "no", "stop", "up", "yes"]  # the shipped examples


def detected(spotter, stream):
    return [(d.detection.label, round(d.detection.time, 1)) for d in run(spotter, stream, block=1600) if d.detection]


def test_a_dc_offset_changes_nothing_the_engine_detects():
    from mrconv_audio.cli import load_model

    model, rate = load_model(None), 16000
    stream = spoken_words(WORDS, rate)[0]
    clean = detected(KeywordSpotter(model, rate, StreamConfig(hop_seconds=0.1)), stream)
    assert [label for label, _ in clean] == WORDS
    for offset in (0.2, -0.5):
        assert detected(KeywordSpotter(model, rate, StreamConfig(hop_seconds=0.1)), stream + offset) == clean
    # Without the DC blocker the same offsets make false accepts (measured: "off" beside "stop" at 0.2)
    raw = [detected(KeywordSpotter(model, rate, StreamConfig(hop_seconds=0.1, remove_dc=False)), stream + offset)
           for offset in (0.2, -0.5)]
    assert any(found != clean for found in raw)


def test_samples_beyond_full_scale_are_clipped_and_counted():
    spotter = KeywordSpotter(ToneModel(), 16000, StreamConfig(hop_seconds=0.1, remove_dc=False))
    loud = np.array([0.5, 3.0, -1e5, 1.0, -1.0], np.float32)
    spotter.push(loud)
    assert spotter.clipped == 2
    np.testing.assert_array_equal(spotter.pending, [0.5, 1.0, -1.0, 1.0, -1.0])


def test_non_finite_scores_raise_in_the_engine_and_are_counted_in_a_stream():
    class NaNModel(ToneModel):
        def forward(self, x, sample_rate=None):
            return super().forward(x, sample_rate) * float("nan")

    spotter = KeywordSpotter(NaNModel(), 16000, StreamConfig(hop_seconds=0.1))
    with pytest.raises(NonFiniteScores, match="non-finite scores"):
        spotter.push(tone_stream([(0.1, "low", 0.3)], seconds=0.5))
    worker = StreamWorker(KeywordSpotter(NaNModel(), 16000, StreamConfig(hop_seconds=0.1))).start()
    for _ in range(3):  # one hop a block: each fails alone, and the stream goes on
        worker.push(np.zeros(1600, np.float32))
    assert worker.wait_processed(4800, timeout=60)
    worker.stop()
    assert worker.stats.errors == 3 and "non-finite" in worker.stats.last_error
