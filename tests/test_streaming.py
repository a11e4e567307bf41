import time

import numpy as np
import pytest
import torch

from helpers import randomize_batchnorms
from mrconv_audio import MRConvClassifier, MRConvConfig
from mrconv_audio.streaming import KeywordSpotter, StreamConfig, StreamWorker
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


def test_stereo_integer_input_is_mixed_down():
    mono = tone_stream([(0.5, "high", 0.3)], seconds=2)
    stereo = np.stack([mono, mono], 1)
    pcm = np.round(stereo * 32767).astype(np.int16)
    a = run(KeywordSpotter(ToneModel(), 16000), mono)
    b = run(KeywordSpotter(ToneModel(), 16000), pcm)
    assert [d.label for d in detections(a)] == [d.label for d in detections(b)] == ["high"]


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


def test_worker_never_blocks_the_callback_and_counts_overflow():
    spotter = KeywordSpotter(ToneModel(delay_s=0.05), 16000, StreamConfig(hop_seconds=0.01))
    worker = StreamWorker(spotter, max_blocks=4).start()
    block = np.zeros(160, np.float32)
    slowest = 0.0
    for _ in range(200):  # 2 s of audio pushed as fast as a callback could
        start = time.perf_counter()
        worker.push(block)
        slowest = max(slowest, time.perf_counter() - start)
    worker.stop(drain=False)
    assert slowest < 0.005
    assert worker.stats.blocks == 200 and worker.stats.dropped_blocks > 100
    assert worker.stats.dropped_samples == 160 * worker.stats.dropped_blocks
    assert worker.stats.hops >= 1


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
    worker.stop()
    assert worker.stats.errors == 1 and "device lost" in worker.stats.last_error
    assert len(seen) == 4
