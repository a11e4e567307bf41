"""A real audio device stream: PortAudio (sounddevice) reading a virtual PulseAudio microphone that a WAV is
played into. Skipped only when the audio server cannot start, with the reason."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import randomize_batchnorms
from mrconv_audio import MRConvClassifier, MRConvConfig
from mrconv_audio.streaming import KeywordSpotter, StreamConfig, StreamWorker
from tone_model import ToneModel, tone_stream
from virtual_mic import VirtualMic

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mic():
    mic = VirtualMic(rate=16000)
    try:
        mic.start()
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"no audio server: {e}")
    yield mic
    mic.stop()


def wait_for_first_callback(worker, timeout=5.0):
    deadline = time.monotonic() + timeout
    while worker.stats.blocks == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert worker.stats.blocks > 0, "no audio callback arrived"


def test_engine_on_a_live_device_stream_matches_the_wav(mic, tmp_path):
    import sounddevice as sd

    wav = tmp_path / "tones.wav"
    sf.write(wav, tone_stream([(0.5, "low", 0.3), (2.5, "high", 0.3), (4.5, "low", 0.3)], seconds=6), 16000)
    found = []
    spotter = KeywordSpotter(ToneModel(), 16000, StreamConfig(hop_seconds=0.1, smoothing=1))
    worker = StreamWorker(spotter, on_result=lambda r: r.detection and found.append(r.detection)).start()
    with sd.InputStream(device="default", channels=1, samplerate=16000, dtype="float32",
                        callback=lambda data, frames, t, status: worker.push(data)):
        wait_for_first_callback(worker)
        player = mic.play(wav)
        assert player.wait(timeout=30) == 0
        time.sleep(1.0)
    worker.stop()
    assert [d.label for d in found] == ["low", "high", "low"]
    gaps = np.diff([d.time for d in found])
    assert np.allclose(gaps, [2.0, 2.0], atol=0.2)  # the WAV's spacing, within two hops
    assert worker.stats.dropped_blocks == 0 and worker.stats.errors == 0


def test_listen_cli_records_what_it_heard_and_stops_on_ctrl_c(mic, tmp_path):
    model = MRConvClassifier(MRConvConfig(d_model=8, depth=1, labels=["yes", "no", "_silence_", "_unknown_"]))
    randomize_batchnorms(model)
    model.eval().save_pretrained(tmp_path / "model")
    played = tone_stream([(0.2, "low", 0.4), (1.0, "high", 0.4)], seconds=2)
    sf.write(tmp_path / "in.wav", played, 16000)
    proc = subprocess.Popen([sys.executable, "-m", "mrconv_audio.cli", "listen", "--model", str(tmp_path / "model"),
                             "--device", "default", "--samplerate", "16000", "--hop", "0.1",
                             "--record", str(tmp_path / "heard.wav")],
                            env=mic.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # wait until the stream is open (model loaded, device started)
        if '"listening"' in line:
            break
    time.sleep(1.0)  # the first callback arrives 0.25-1.9 s after the stream starts
    assert mic.play(tmp_path / "in.wav").wait(timeout=30) == 0
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    stats = json.loads(err.strip().splitlines()[-1])
    assert stats["stopped"] and stats["hops"] > 10 and stats["errors"] == 0 and stats["sample_rate"] == 16000
    heard, rate = sf.read(tmp_path / "heard.wav", dtype="float32")
    assert rate == 16000 and len(heard) > len(played)
    # The recording contains the played signal: find it by cross-correlation.
    corr = np.correlate(heard, played[3200:19200], mode="valid")
    best = int(np.argmax(corr))
    segment = heard[best : best + 16000]
    similarity = np.dot(segment, played[3200:19200]) / (np.linalg.norm(segment) * np.linalg.norm(played[3200:19200]))
    assert similarity > 0.99


def test_shipped_model_hears_real_speakers_through_the_microphone(mic, tmp_path):
    """Real recordings (the subset's test speakers, app/examples) played into the microphone, 2 s apart; the shipped
    model listening live must find what it finds offline in the same WAV, each at the word that was playing."""
    from app.listen import detect_file
    from mrconv_audio.cli import load_model
    from mrconv_audio.data.audio import fit_length, load_audio

    clips = sorted((ROOT / "app" / "examples").glob("*.wav"))
    words, parts = [], [np.zeros(8000, np.float32)]
    for clip in clips:
        x, rate = load_audio(clip)
        assert rate == 16000
        words.append(clip.name.split("_")[0])
        parts += [fit_length(x, 16000), np.zeros(16000, np.float32)]
    sf.write(tmp_path / "words.wav", np.concatenate(parts), 16000)
    onsets = 0.5 + 2.0 * np.arange(len(words))  # word i plays in [onset, onset + 1 s)
    offline = detect_file(load_model(None), tmp_path / "words.wav", hop=0.25)["detections"]

    proc = subprocess.Popen([sys.executable, "-m", "mrconv_audio.cli", "listen", "--device", "default",
                             "--samplerate", "16000"],
                            env=mic.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if '"listening"' in line:
            break
    time.sleep(1.0)
    assert mic.play(tmp_path / "words.wav").wait(timeout=60) == 0
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    live = [json.loads(line) for line in out.splitlines()]

    def matched(detections, shift=0.0):  # the word playing when each detection fired, or None
        return [next((w for w, t in zip(words, onsets) if t - 0.3 <= d["time"] - shift <= t + 1.3), None)
                for d in detections]

    assert [d["label"] for d in offline] == matched(offline), offline  # offline: right words only
    assert len(offline) >= len(words) // 2, offline  # the model finds at least half of these real words
    assert live, f"nothing detected live; offline found {offline}"
    # Live times count from when the stream opened: align the first live detection with the same word offline.
    offline_times = {d["label"]: d["time"] for d in offline}
    assert live[0]["label"] in offline_times, (live, offline)
    shift = live[0]["time"] - offline_times[live[0]["label"]]
    assert [d["label"] for d in live] == matched(live, shift), live  # live: right words, at the right times
    assert len(live) >= len(offline) - 1, (live, offline)
