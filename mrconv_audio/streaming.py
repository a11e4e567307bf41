"""Streaming keyword spotting: a ring buffer of the model's window, classified every hop (no UI here).

    KeywordSpotter      synchronous core: feed samples, get one HopResult per completed hop
    Decider             its decision (thresholds, gate, refractory, one sound one detection), replayable apart
                        from the model
    StreamWorker        the real-time part: an audio callback pushes blocks into a bounded queue (never blocks),
                        a worker thread runs the spotter; overflow is counted, not fatal

Each hop: mono mixdown -> window (the model's 1 s at the input's own rate) -> model (kernel resampling, or the
audio resampled to the model's rate) -> softmax -> mean over the last `smoothing` hops -> a detection when a
keyword's smoothed probability passes its threshold, outside the refractory period, and the window is not silent.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from .data.audio import resample
from .device import pick_device

NON_KEYWORDS = ("_silence_", "_unknown_")


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale (1.0); -200 for digital silence."""
    return 20 * math.log10(max(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))), 1e-10))


@dataclass
class StreamConfig:
    hop_seconds: float = 0.25  # benchmarks/streaming.py: 0.1 s hops exceed the CPU budget for 16 kHz+ kernel mode
    smoothing: int = 3  # hops whose probabilities are averaged
    threshold: float = 0.6  # default per-class threshold on the smoothed probability
    thresholds: dict[str, float] = field(default_factory=dict)  # per-class overrides
    refractory_seconds: float = 1.5  # after a detection that keyword cannot fire again for this long (a word stays
    #                                  in the 1 s window for about 1 s plus its own length)
    same_word_seconds: float = 0.5  # one sound, one detection: a detection whose loudest moment is this close to
    #                                 the previous one's is that word again under another label, and does not fire
    energy_gate_dbfs: float = -50.0  # windows quieter than this (RMS, dB full scale) never fire
    mode: str = "kernel"  # kernel: run at the input's rate; input: resample the audio to the model's rate
    ignore: tuple[str, ...] = NON_KEYWORDS  # classes that never fire

    def __post_init__(self):
        if self.hop_seconds <= 0 or self.smoothing < 1 or self.refractory_seconds < 0 or self.same_word_seconds < 0:
            raise ValueError("hop_seconds must be > 0, smoothing >= 1, refractory_seconds and same_word_seconds >= 0")
        if self.mode not in ("kernel", "input"):
            raise ValueError(f"mode must be 'kernel' or 'input', got {self.mode!r}")
        for name, value in [("threshold", self.threshold), *self.thresholds.items()]:
            if not 0 < value <= 1:
                raise ValueError(f"threshold {name!r} must be in (0, 1], got {value}")


@dataclass
class Detection:
    label: str
    score: float  # smoothed probability when it fired
    time: float  # seconds from the stream's start: the loudest moment of the window that fired
    latency_ms: float  # processing time of the hop that fired


@dataclass
class HopResult:
    end_time: float  # seconds from the stream's start at the end of the window
    probabilities: np.ndarray  # smoothed, (classes,)
    latency_ms: float
    rms_dbfs: float
    gated: bool  # too quiet to fire
    detection: Detection | None = None

    def top(self, labels: list[str], k: int = 3) -> list[tuple[str, float]]:
        order = np.argsort(-self.probabilities)[:k]
        return [(labels[i], float(self.probabilities[i])) for i in order]


class Decider:
    """The engine's decision, apart from the model: per-class thresholds on the smoothed probabilities, the energy
    gate, the refractory period and one-sound-one-detection. Holds that state, so the same decisions can be replayed
    over recorded hops at other thresholds (stream_eval) without running the model again."""

    def __init__(self, labels: list[str], config: StreamConfig):
        self.cfg = config
        self.labels = list(labels)
        unknown = set(config.thresholds) - set(self.labels)
        if unknown:
            raise ValueError(f"thresholds for classes the model does not have: {sorted(unknown)}")
        self.fire_mask = np.array([label not in config.ignore for label in self.labels])
        self.thresholds = np.array([config.thresholds.get(label, config.threshold) for label in self.labels])
        self.reset()

    def reset(self) -> None:
        self.last_fired: dict[str, float] = {}
        self.last_word_time = -math.inf  # stream time of the last detection's word

    def gated(self, level_dbfs: float) -> bool:
        return level_dbfs < self.cfg.energy_gate_dbfs

    def decide(self, probs: np.ndarray, end_time: float, level_dbfs: float, word_time, latency_ms: float = 0.0):
        """The Detection this hop fires, or None. `word_time()` gives the window's loudest moment; it is only called
        for a detection the refractory period allows (the live engine computes it then)."""
        if self.gated(level_dbfs):
            return None
        candidates = np.flatnonzero(self.fire_mask & (probs >= self.thresholds))
        if not len(candidates):
            return None
        best = int(candidates[np.argmax(probs[candidates])])
        label = self.labels[best]
        if end_time - self.last_fired.get(label, -math.inf) < self.cfg.refractory_seconds:
            return None
        when = word_time()
        if when - self.last_word_time < self.cfg.same_word_seconds:
            return None
        self.last_fired[label] = end_time
        self.last_word_time = when
        return Detection(label, float(probs[best]), when, latency_ms)


class KeywordSpotter:
    """Synchronous streaming classifier. `push(samples)` -> results for every hop completed by those samples."""

    def __init__(self, model, sample_rate: int, config: StreamConfig | None = None, device: str = "auto"):
        self.cfg = config or StreamConfig()
        self.device = pick_device(device)
        if not getattr(model, "reparameterized", True) and hasattr(model, "reparameterize"):
            model.reparameterize()  # one FFT convolution per layer
        self.model = model.to(self.device).eval()
        self.labels = list(model.labels)
        self.decider = Decider(self.labels, self.cfg)
        self.sample_rate = int(sample_rate)
        self.model_rate = model.config.sample_rate
        self.window = model.max_samples(self.sample_rate)  # the model's window, in samples at the input's rate
        self.hop = max(1, round(self.cfg.hop_seconds * self.sample_rate))
        self.buffer = np.zeros(self.window, dtype=np.float32)  # the last `window` samples, oldest first
        self.pending = np.zeros(0, dtype=np.float32)  # samples received since the last hop
        self.samples_seen = 0  # samples that have entered the buffer
        self.recent = deque(maxlen=self.cfg.smoothing)

    def reset(self) -> None:
        self.buffer[:] = 0
        self.pending = np.zeros(0, dtype=np.float32)
        self.samples_seen = 0
        self.recent.clear()
        self.decider.reset()

    @staticmethod
    def mono(samples: np.ndarray) -> np.ndarray:
        """(frames,) or (frames, channels) of any numeric dtype -> float32 mono."""
        samples = np.asarray(samples)
        if samples.ndim == 2:
            samples = samples.mean(axis=1)
        if samples.dtype.kind in "iu":  # integer PCM -> [-1, 1]
            samples = samples / float(np.iinfo(samples.dtype).max + 1)
        samples = samples.astype(np.float32, copy=False)
        return np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)

    def push(self, samples: np.ndarray) -> list[HopResult]:
        self.pending = np.concatenate([self.pending, self.mono(samples)])
        results = []
        while len(self.pending) >= self.hop:
            hop, self.pending = self.pending[: self.hop], self.pending[self.hop :]
            self.buffer = np.concatenate([self.buffer[self.hop :], hop]) if self.hop < self.window else hop[-self.window :]
            self.samples_seen += self.hop
            results.append(self._classify())
        return results

    @torch.no_grad()
    def _classify(self) -> HopResult:
        start = time.perf_counter()
        x = torch.from_numpy(self.buffer)[None].to(self.device)
        if self.cfg.mode == "kernel":
            logits = self.model(x, sample_rate=self.sample_rate)
        else:
            x = resample(x, self.sample_rate, self.model_rate)[:, : self.model.max_samples()]
            logits = self.model(x)
        self.recent.append(torch.softmax(logits.float(), -1)[0].cpu().numpy())
        probs = np.mean(self.recent, axis=0)
        latency_ms = (time.perf_counter() - start) * 1e3
        end_time = self.samples_seen / self.sample_rate
        level = rms_dbfs(self.buffer)
        result = HopResult(end_time, probs, latency_ms, level, gated=self.decider.gated(level))
        word_time = lambda: self.loudest_time(end_time)  # noqa: E731 - only looked up when the refractory allows
        result.detection = self.decider.decide(probs, end_time, level, word_time, latency_ms)
        return result

    def loudest_time(self, end_time: float) -> float:
        """Stream time of the window's loudest 50 ms: where the word most likely is."""
        frame = max(1, self.sample_rate // 20)
        n = len(self.buffer) // frame
        energy = np.square(self.buffer[: n * frame].reshape(n, frame)).mean(axis=1)
        centre = (int(np.argmax(energy)) + 0.5) * frame
        return end_time - (len(self.buffer) - centre) / self.sample_rate


@dataclass
class StreamStats:
    blocks: int = 0
    dropped_blocks: int = 0
    dropped_samples: int = 0
    hops: int = 0
    errors: int = 0
    last_error: str = ""


class StreamWorker:
    """Bounded queue between an audio callback and a worker thread running a KeywordSpotter.

    `push` never blocks: when the queue is full the block is dropped and counted (the audio thread must keep
    its deadline). Results go to `on_result(HopResult)` on the worker thread; a failing hop is counted and
    reported in the stats, it does not stop the stream.
    """

    def __init__(self, spotter: KeywordSpotter, on_result=None, max_blocks: int = 64, on_audio=None):
        self.spotter, self.on_result, self.on_audio = spotter, on_result, on_audio
        self.queue: queue.Queue = queue.Queue(maxsize=max_blocks)
        self.stats = StreamStats()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def push(self, block: np.ndarray) -> bool:
        """Called from the audio callback. Copies the block; returns False when it had to be dropped."""
        self.stats.blocks += 1
        try:
            self.queue.put_nowait(np.array(block, copy=True))
            return True
        except queue.Full:
            self.stats.dropped_blocks += 1
            self.stats.dropped_samples += len(block)
            return False

    def start(self) -> "StreamWorker":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mrconv-stream", daemon=True)
        self._thread.start()
        return self

    def stop(self, drain: bool = True, timeout: float = 10.0) -> None:
        """Stop the worker; with drain, blocks already queued are processed first."""
        if drain:
            deadline = time.monotonic() + timeout
            while not self.queue.empty() and time.monotonic() < deadline:
                time.sleep(0.01)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                block = self.queue.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                if self.on_audio is not None:
                    self.on_audio(block)
                for result in self.spotter.push(block):
                    self.stats.hops += 1
                    if self.on_result is not None:
                        self.on_result(result)
            except Exception as e:  # one bad hop must not end a live stream
                self.stats.errors += 1
                self.stats.last_error = f"{type(e).__name__}: {e}"
