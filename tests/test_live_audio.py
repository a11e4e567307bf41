"""A real audio device stream: PortAudio (sounddevice) reading a virtual PulseAudio microphone that a WAV is
played into. Skipped only when the audio server cannot start, with the reason."""
import json
import queue
import signal
import subprocess
import sys
import threading
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


class AudioClock:
    """Counts the samples a device callback delivers, so a test can wait for audio to have arrived (an event, not a
    sleep: on a busy machine audio arrives late, but it arrives)."""

    def __init__(self):
        self.samples = 0
        self.changed = threading.Condition()

    def add(self, n: int) -> None:
        with self.changed:
            self.samples += n
            self.changed.notify_all()

    def wait_for(self, samples: int, timeout: float = 120) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.samples >= samples, timeout), "the device stopped delivering audio"


class Listen:
    """`mrconv-audio listen` in a subprocess, its stderr JSON lines read on a thread, so the test can wait for the
    state it needs: the stream flowing, then more audio heard after playback ended."""

    def __init__(self, args, env):
        self.proc = subprocess.Popen([sys.executable, "-m", "mrconv_audio.cli", "listen", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def next_status(self, timeout: float = 120) -> dict:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                self.proc.kill()  # do not leave it running after the test
                raise AssertionError(f"no status line from listen in {timeout} s:\n" + "".join(self.stderr))
            assert line is not None, "listen ended early:\n" + "".join(self.stderr)
            if line.startswith('{"status"'):
                return json.loads(line)["status"]

    def wait_line(self, key: str, timeout: float = 120) -> dict:
        """The next stderr JSON line with `key` (status lines in between are skipped) within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                raise AssertionError(f"no {key!r} line from listen in {timeout} s:\n" + "".join(self.stderr))
            assert line is not None, f"listen ended before a {key!r} line:\n" + "".join(self.stderr)
            if line.startswith("{") and key in json.loads(line):
                return json.loads(line)

    def heard(self, status: dict) -> float:
        """Seconds of audio the device had delivered at that status line (processed or waiting)."""
        return status["stream_seconds"] + status["behind_seconds"]

    def wait_flowing(self) -> None:
        while self.heard(self.next_status()) <= 0:
            pass

    def wait_heard_more(self, seconds: float) -> None:
        """Wait until the device has delivered `seconds` more audio than at the next status line."""
        start = self.heard(self.next_status())
        while self.heard(self.next_status()) < start + seconds:
            pass

    def stop(self) -> tuple[str, dict]:
        self.proc.send_signal(signal.SIGINT)
        out = self.proc.stdout.read()  # until listen closes it
        self.proc.wait(timeout=120)
        self.reader.join(120)
        err = "".join(self.stderr)
        assert self.proc.returncode == 0, err
        return out, json.loads(err.strip().splitlines()[-1])


def with_silence(x: np.ndarray, seconds: float, rate: int = 16000) -> np.ndarray:
    """What is played, then `seconds` of silence: when the player exits, everything that matters has been played
    `seconds` ago, more than the audio server's buffering."""
    return np.concatenate([x, np.zeros(round(seconds * rate), np.float32)])


def write_words_to_play(path, count=None) -> list[str]:
    """The first `count` shipped examples (all by default) as one 16 kHz WAV: 0.5 s of silence, then each word
    padded to 1 s and followed by 1 s of silence (word i plays from 0.5 + 2 i s), then with_silence's tail.
    Returns the words in order."""
    from mrconv_audio.audiofile import load_audio

    words, parts = [], [np.zeros(8000, np.float32)]
    for clip in sorted((ROOT / "app" / "examples").glob("*.wav"))[:count]:
        x, rate = load_audio(clip)
        assert rate == 16000 and len(x) <= 16000
        words.append(clip.name.split("_")[0])
        parts += [np.pad(x, (0, 16000 - len(x))), np.zeros(16000, np.float32)]
    sf.write(path, with_silence(np.concatenate(parts), 2.0), 16000)
    return words


def test_engine_on_a_live_device_stream_matches_the_wav(mic, tmp_path):
    import sounddevice as sd

    wav = tmp_path / "tones.wav"
    sf.write(wav, tone_stream([(0.5, "low", 0.3), (2.5, "high", 0.3), (4.5, "low", 0.3)], seconds=6), 16000)
    found, clock = [], AudioClock()
    spotter = KeywordSpotter(ToneModel(), 16000, StreamConfig(hop_seconds=0.1, smoothing=1))
    worker = StreamWorker(spotter, on_result=lambda r: r.detection and found.append(r.detection)).start()

    def callback(data, frames, t, status):
        worker.push(data)
        clock.add(len(data))

    with sd.InputStream(device="default", channels=1, samplerate=16000, dtype="float32", callback=callback):
        assert worker.first_audio.wait(120), "no audio callback arrived"
        player = mic.play(wav)
        assert player.wait(timeout=120) == 0
        clock.wait_for(clock.samples + 16000)  # one more second heard: the last word and its tail are in
    assert worker.stop(drain=True)
    assert [d.label for d in found] == ["low", "high", "low"]
    gaps = np.diff([d.time for d in found])
    assert np.allclose(gaps, [2.0, 2.0], atol=0.2)  # the WAV's spacing, within two hops
    assert worker.stats.dropped_blocks == 0 and worker.stats.errors == 0


def test_listen_cli_records_what_it_heard_and_stops_on_ctrl_c(mic, tmp_path):
    model = MRConvClassifier(MRConvConfig(d_model=8, depth=1, labels=["yes", "no", "_silence_", "_unknown_"]))
    randomize_batchnorms(model)
    model.eval().save_pretrained(tmp_path / "model")
    played = tone_stream([(0.2, "low", 0.4), (1.0, "high", 0.4)], seconds=2)
    sf.write(tmp_path / "in.wav", with_silence(played, 2.0), 16000)
    listen = Listen(["--model", str(tmp_path / "model"), "--device", "default", "--samplerate", "16000", "--hop",
                     "0.1", "--record", str(tmp_path / "heard.wav")], mic.env)
    listen.wait_flowing()
    assert mic.play(tmp_path / "in.wav").wait(timeout=120) == 0
    listen.wait_heard_more(1.0)
    out, stats = listen.stop()
    assert stats["stopped"] and stats["hops"] > 10 and stats["errors"] == 0 and stats["sample_rate"] == 16000
    assert stats["dropped_blocks"] == 0, stats
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
    words = write_words_to_play(tmp_path / "words.wav")
    onsets = 0.5 + 2.0 * np.arange(len(words))  # word i plays in [onset, onset + 1 s)
    offline = detect_file(load_model(None), tmp_path / "words.wav", hop=0.25)["detections"]

    listen = Listen(["--device", "default", "--samplerate", "16000"], mic.env)
    listen.wait_flowing()
    assert mic.play(tmp_path / "words.wav").wait(timeout=120) == 0
    listen.wait_heard_more(1.0)
    out, stats = listen.stop()
    assert stats["dropped_blocks"] == 0 and stats["errors"] == 0, stats
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


def test_listen_says_when_it_falls_behind_and_what_to_do(mic):
    """A model 1.5x slower than real time (a hop of 0.1 s takes 0.15 s, asleep, so the machine's load does not
    matter): listen warns before it starts, and while it runs says how far behind it is and the fix."""
    import io

    from app.listen import run_listen

    out, err = io.StringIO(), io.StringIO()
    stats = run_listen(ToneModel(delay_s=0.15), device="default", samplerate=16000, hop=0.1, duration=8, out=out,
                       err=err)
    lines = [json.loads(line) for line in err.getvalue().splitlines()]
    assert "a hop takes" in lines[0]["warning"] and "--hop 0.5" in lines[0]["warning"]  # before listening
    warnings = [line["status"]["warning"] for line in lines if "status" in line and line["status"]["warning"]]
    assert warnings, err.getvalue()
    assert "behind real time" in warnings[-1] and "each 100 ms hop takes 1" in warnings[-1]
    assert "Fix: --hop 0.5" in warnings[-1] and "--samplerate" not in warnings[-1]  # 16 kHz already
    assert "behind real time" in stats["warning"] and stats["median_hop_ms"] >= 150


def tiny_listen_model(folder):
    model = MRConvClassifier(MRConvConfig(d_model=8, depth=1, labels=["yes", "no", "_silence_", "_unknown_"]))
    randomize_batchnorms(model)
    model.eval().save_pretrained(folder)
    return str(folder)


def test_listen_says_when_the_audio_server_dies_and_exits_non_zero(mic, tmp_path):
    listen = Listen(["--model", tiny_listen_model(tmp_path / "model"), "--device", "default", "--samplerate", "16000",
                     "--hop", "0.1"], mic.env)
    try:
        listen.wait_flowing()
        mic.kill()  # the real fault: the audio server dies mid-stream
        error = listen.wait_line("error")["error"]
        assert "reopening 'default'" in error and ("stream stopped" in error or "no audio for" in error), error
        assert listen.proc.wait(timeout=120) == 2, "".join(listen.stderr)  # no server came back: it gives up
        listen.reader.join(120)
        last = "".join(listen.stderr).strip().splitlines()
        assert last[-1].startswith("mrconv-audio listen: error:") and "could not reopen 'default'" in last[-1]
        stats = json.loads(last[-2])
        assert stats["stopped"] and stats["device_lost"] == 1 and stats["reopened"] == 0 and stats["hops"] > 0
    finally:
        listen.proc.kill()
        mic.start()  # a new server for the tests after this one


def test_listen_reopens_the_device_when_the_audio_server_comes_back(mic, tmp_path):
    listen = Listen(["--model", tiny_listen_model(tmp_path / "model"), "--device", "default", "--samplerate", "16000",
                     "--hop", "0.1"], mic.env)
    try:
        listen.wait_flowing()
        mic.kill()
        listen.wait_line("error")
        mic.start()  # the server is back: listen finds it and goes on
        assert listen.wait_line("reopened")["sample_rate"] == 16000
        listen.wait_heard_more(1.0)  # audio flows again
        out, stats = listen.stop()
        assert stats["device_lost"] == 1 and stats["reopened"] == 1 and stats["error"] is None
    finally:
        listen.proc.kill()


@pytest.mark.parametrize("args,message", [
    (["--device", "99"], "--device 99: no such input device"),
    (["--record", "/no/such/dir/x.wav"], "--record /no/such/dir/x.wav: folder /no/such/dir does not exist"),
    (["--samplerate", "200000"], "--samplerate 200000: a 200000 Hz input is out of range for this model"),
    (["--no-server"], "no audio input found"),
])
def test_listen_bad_settings_are_a_clear_error_before_the_stream_starts(mic, tmp_path, args, message):
    env = dict(mic.env)
    if args == ["--no-server"]:
        env["PULSE_SERVER"], args = f"unix:{tmp_path}/no-server.sock", []
    done = subprocess.run([sys.executable, "-m", "mrconv_audio.cli", "listen", "--model",
                           tiny_listen_model(tmp_path / "model"), "--duration", "30", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"mrconv-audio listen: error: {message}"), done.stderr
    assert '"listening"' not in done.stderr  # refused before the stream opened
