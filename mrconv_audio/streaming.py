"""Streaming keyword spotting: a ring buffer of the model's window, classified every hop (no UI here).

    KeywordSpotter      synchronous core: feed samples, get one HopResult per completed hop
    Decider             its decision (thresholds, gate, refractory, one sound one detection), replayable apart
                        from the model
    StreamWorker        the real-time part: an audio callback pushes blocks into a bounded queue (never blocks),
                        a worker thread runs the spotter; overflow is counted, not fatal

    LogMelFrames        the fast path of a log-mel model: only the frames new audio brings are computed
    LagMonitor          says when live processing falls behind real time, why, and what to do about it

Each hop: mono mixdown, DC offset removed, clipped to [-1, 1] (conditioning.py) -> window (the model's 1 s at the input's own rate) -> model (kernel resampling, or the
audio resampled to the model's rate) -> softmax -> mean over the last `smoothing` hops -> a detection when a
keyword's smoothed probability passes its threshold, outside the refractory period, and the window is not silent.

Where the time goes (benchmarks/streaming.py): a hop of the shipped log-mel model is its front end over the 1 s
window plus six FFT convolutions over 100 frames, each a few ms on one core. Two things made it slow on a busy
2-core machine: torch split these small operations over 2 threads, and every hop waited for the thread the OS had
given to another program (10-100x slower); and the front end recomputed 100 frames when a hop brings 10-25 new
ones. So a hop runs on one thread, and a log-mel model in kernel mode reuses the frames of audio already seen (the
bidirectional blocks still see the whole window, so they are recomputed; over 100 frames they are cheap).
"""
from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .conditioning import DCBlocker

try:  # the light install (README, "Light runtime") has no torch: KeywordSpotter then runs exported models only
    import torch
    import torch.nn.functional as F

    from .data.audio import resample
    from .device import pick_device
    from .frontend import LogMel, frame_layout
    from .model import MRConvClassifier
except ModuleNotFoundError as e:
    if e.name != "torch":
        raise
    torch = None

NON_KEYWORDS = ("_silence_", "_unknown_")


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale (1.0); -200 for digital silence."""
    return 20 * math.log10(max(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))), 1e-10))


@contextmanager
def torch_threads(n: int | None):
    """Run torch's CPU operations on `n` threads inside the block (None: leave as is). The setting is the calling
    thread's (OpenMP), and it is restored on the way out."""
    before = torch.get_num_threads()
    change = n is not None and n != before
    if change:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)


@dataclass
class StreamConfig:
    hop_seconds: float = 0.25  # benchmarks/streaming.py: 0.1 s hops exceed the CPU budget for 16 kHz+ kernel mode
    smoothing: int = 3  # hops whose probabilities are averaged
    threshold: float = 0.6  # default per-class threshold on the smoothed probability
    thresholds: dict[str, float] = field(default_factory=dict)  # per-class overrides
    refractory_seconds: float | None = None  # after a detection that keyword cannot fire again for this long;
    #   None: as long as the sound that fired can still move the smoothed probabilities (see refractory())
    same_word_seconds: float = 0.5  # one sound, one detection: a detection whose loudest moment is this close to
    #                                 the previous one's is that word again under another label, and does not fire
    energy_gate_dbfs: float = -50.0  # windows quieter than this (RMS, dB full scale) never fire
    mode: str = "kernel"  # kernel: run at the input's rate; input: resample the audio to the model's rate
    ignore: tuple[str, ...] = NON_KEYWORDS  # classes that never fire
    remove_dc: bool = True  # a 10 Hz high-pass before the model (conditioning.py: an offset makes false accepts)

    def __post_init__(self):
        if self.hop_seconds <= 0 or self.smoothing < 1 or (self.refractory_seconds or 0) < 0 or self.same_word_seconds < 0:
            raise ValueError("hop_seconds must be > 0, smoothing >= 1, refractory_seconds and same_word_seconds >= 0")
        if self.mode not in ("kernel", "input"):
            raise ValueError(f"mode must be 'kernel' or 'input', got {self.mode!r}")
        for name, value in [("threshold", self.threshold), *self.thresholds.items()]:
            if not 0 < value <= 1:
                raise ValueError(f"threshold {name!r} must be in (0, 1], got {value}")

    def refractory(self, window_seconds: float = 1.0) -> float:
        """The refractory period. By default window + word + smoothing: the sound that fired ends at most a word
        (at most a window long) after the hop that fired, stays in view until the window has passed its end, and the
        smoothing carries it (smoothing - 1) hops further: 2.5 s for 1 s windows, 0.25 s hops and smoothing 3. The
        earlier fixed 1.5 s let one long word fire twice."""
        if self.refractory_seconds is not None:
            return self.refractory_seconds
        return 2 * window_seconds + (self.smoothing - 1) * self.hop_seconds


class NonFiniteScores(ValueError):
    """The model gave NaN or infinite scores: no label can be read from them (never a silent argmax of NaN)."""


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

    def __init__(self, labels: list[str], config: StreamConfig, window_seconds: float = 1.0):
        self.cfg = config
        self.refractory_seconds = config.refractory(window_seconds)
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
        if end_time - self.last_fired.get(label, -math.inf) < self.refractory_seconds:
            return None
        when = word_time()
        if when - self.last_word_time < self.cfg.same_word_seconds:
            return None
        self.last_fired[label] = end_time
        self.last_word_time = when
        return Detection(label, float(probs[best]), when, latency_ms)


class LogMelFrames:
    """The log-mel frames of a sliding window, computing only those the window has not held before.

    A frame wholly inside the window depends only on the audio under it, so a frame the previous window also held
    wholly (same position in the stream) is taken from it while the window slides. Frames that reach into the zero
    padding at the window's edges (two or three a window) are computed afresh every hop, as the offline front end
    pads them. The result is the offline front end's on the same window (LogMel.log_mel on the same samples), for
    any hop and rate; where a rate's frame grid does not repeat hop to hop (22.05 kHz), more frames are computed.

        buffer: (window,) samples at `rate`, window_start: its first sample's position in the stream
        -> (n_mels, frames)
    """

    def __init__(self, frontend: LogMel, rate: int, window: int):
        self.frontend, self.rate = frontend, rate
        self.length = frontend.window_length(rate)
        self.pad = (self.length // 2, self.length - self.length // 2)  # as LogMel.forward pads
        index = frame_layout(window, float(rate), float(frontend.frame_rate), self.length)  # into the padded window
        self.index = index  # (frames, length)
        self.starts = index[:, 0].numpy() - self.pad[0]  # first sample of each frame, relative to the window
        self.inside = (self.starts >= 0) & (self.starts + self.length <= window)
        self.computed = 0  # frames computed so far (for tests and benchmarks)
        self.reset()

    def reset(self) -> None:
        self.positions = np.zeros(0, np.int64)  # the previous window's frames: stream positions, features
        self.features: torch.Tensor | None = None

    def __call__(self, buffer: torch.Tensor, window_start: int) -> torch.Tensor:
        positions = window_start + self.starts
        reuse = np.zeros(len(positions), bool)
        source = np.zeros(len(positions), np.int64)
        if len(self.positions):
            at = np.minimum(np.searchsorted(self.positions, positions), len(self.positions) - 1)
            reuse = self.inside & self.inside[at] & (self.positions[at] == positions)  # whole then and now
            source = at
        missing = np.flatnonzero(~reuse)
        frames = torch.empty(len(positions), self.frontend.n_mels, dtype=buffer.dtype, device=buffer.device)
        if len(missing):
            padded = F.pad(buffer, self.pad)
            fresh = padded[self.index[missing].to(buffer.device)]  # (missing, length)
            frames[torch.from_numpy(missing)] = self.frontend.log_mel(fresh, self.rate)
            self.computed += len(missing)
        kept = np.flatnonzero(reuse)
        if len(kept):
            frames[torch.from_numpy(kept)] = self.features[torch.from_numpy(source[kept])]
        self.positions, self.features = positions, frames
        return frames.T


def logmel_logits(model, features: torch.Tensor) -> torch.Tensor:
    """What MRConvClassifier.forward does after its front end, for one unpadded window: (B, n_mels, frames) ->
    logits (B, classes). tests/test_streaming.py checks it against the model on the same windows."""
    h = model.encoder(model.input_norm(features))
    for block in model.blocks:
        h = block(h, 1, None)
    return model.decoder(h.mean(dim=-1))


class KeywordSpotter:
    """Synchronous streaming classifier. `push(samples)` -> results for every hop completed by those samples;
    `skip(n)` -> n samples were lost (dropped by a busy machine): the clock moves on, the window holds silence there.

    incremental: a log-mel model in kernel mode computes only the new frames each hop (LogMelFrames); otherwise,
    and for other models, the whole window goes through the model. threads: torch CPU threads for a hop (None:
    the process's setting); one, because a 1 s window is too small to share out, and a second thread that the OS
    has lent to another program stalls every hop.
    """

    def __init__(self, model, sample_rate: int, config: StreamConfig | None = None, device: str = "auto",
                 incremental: bool = True, threads: int | None = 1):
        self.cfg = config or StreamConfig()
        self.exported = getattr(model, "exported", False)  # onnx_model.OnnxModel: numpy in and out, no torch
        self.device = model.device if self.exported else pick_device(device)
        self.threads = threads
        if not getattr(model, "reparameterized", True) and hasattr(model, "reparameterize"):
            model.reparameterize()  # one FFT convolution per layer
        self.model = model.to(self.device).eval()
        self.labels = list(model.labels)
        self.sample_rate = int(sample_rate)
        if hasattr(model, "rate_range"):  # say so now, not at the first hop
            low, high = model.rate_range()
            if not low <= self.sample_rate <= high:
                raise ValueError(f"a {self.sample_rate} Hz input is out of range for this model: expected {low:g} "
                                 f"to {high:g} Hz")
        self.model_rate = model.sample_rate if self.exported else model.config.sample_rate
        self.window = model.max_samples(self.sample_rate)  # the model's window, in samples at the input's rate
        self.decider = Decider(self.labels, self.cfg, window_seconds=self.window / self.sample_rate)
        self.hop = max(1, round(self.cfg.hop_seconds * self.sample_rate))
        logmel = (not self.exported and isinstance(model, MRConvClassifier)
                  and isinstance(getattr(model, "frontend", None), LogMel))
        self.frames = (LogMelFrames(model.frontend, self.sample_rate, self.window)  # logmel_logits knows its layers
                       if incremental and logmel and self.cfg.mode == "kernel" else None)
        self.buffer = np.zeros(self.window, dtype=np.float32)  # the last `window` samples, oldest first
        self.pending = np.zeros(0, dtype=np.float32)  # samples received since the last hop
        self.samples_seen = 0  # samples that have entered the buffer (received or lost)
        self.recent = deque(maxlen=self.cfg.smoothing)
        self.dc = DCBlocker(self.sample_rate) if self.cfg.remove_dc else None
        self.clipped = 0  # samples beyond [-1, 1] after DC removal, clipped (a stream cannot be rescaled later)

    def reset(self) -> None:
        self.buffer[:] = 0
        self.clipped = 0
        if self.dc is not None:
            self.dc.reset()
        self.pending = np.zeros(0, dtype=np.float32)
        self.samples_seen = 0
        self.recent.clear()
        self.decider.reset()
        if self.frames is not None:
            self.frames.reset()

    @staticmethod
    def mono(samples: np.ndarray) -> np.ndarray:
        """(frames,) or (frames, channels) of any numeric dtype -> float32 mono in [-1, 1]. Integer PCM is scaled
        before the channels are averaged (an average of int16 is no longer int16); unsigned PCM (8-bit WAV) is
        centred on half its range."""
        samples = np.asarray(samples)
        if samples.dtype.kind == "u":
            half = (np.iinfo(samples.dtype).max + 1) / 2
            samples = (samples.astype(np.float64) - half) / half
        elif samples.dtype.kind == "i":
            samples = samples.astype(np.float64) / (np.iinfo(samples.dtype).max + 1)
        samples = samples.astype(np.float32, copy=False)
        if samples.ndim == 2:
            samples = samples.mean(axis=1, dtype=np.float32)
        return np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)

    def condition(self, samples: np.ndarray) -> np.ndarray:
        """Mono, DC removed, clipped to full scale (counted in `clipped`)."""
        x = self.mono(samples)
        if self.dc is not None:
            x = self.dc(x)
        over = int(np.count_nonzero(np.abs(x) > 1))
        if over:
            self.clipped += over
            x = np.clip(x, -1, 1)
        return x

    def push(self, samples: np.ndarray) -> list[HopResult]:
        self.pending = np.concatenate([self.pending, self.condition(samples)])
        results = []
        while len(self.pending) >= self.hop:
            hop, self.pending = self.pending[: self.hop], self.pending[self.hop :]
            self._advance(hop)
            results.append(self._classify())
        return results

    def skip(self, n: int) -> None:
        """`n` samples after those pushed so far were lost. They count as silence: the clock advances by n, hops
        that end inside the gap are not classified (there is nothing to hear), and the smoothing starts afresh, so
        no average spans the gap."""
        if n <= 0:
            return
        total = len(self.pending) + n
        advance = total - total % self.hop  # whole hops up to the end of the gap
        if advance:
            # The last min(advance, window) samples of pending + n zeros, without building the zeros.
            m = min(advance, self.window)
            tail = np.zeros(m, np.float32)
            lo, hi = advance - m, min(len(self.pending), advance)
            if hi > lo:
                tail[: hi - lo] = self.pending[lo:hi]
            self._advance(tail, advance)
        self.pending = np.concatenate([self.pending[advance:], np.zeros(total - max(advance, len(self.pending)),
                                                                        np.float32)])
        self.recent.clear()

    def _advance(self, tail: np.ndarray, count: int | None = None) -> None:
        """Slide the window by `count` samples (default len(tail)), of which `tail` are the last."""
        count = len(tail) if count is None else count
        if count < self.window:
            self.buffer = np.concatenate([self.buffer[count:], tail])
        else:
            self.buffer = tail[-self.window :].copy()
        self.samples_seen += count

    def _logits(self) -> torch.Tensor:
        x = torch.from_numpy(self.buffer).to(self.device)
        if self.frames is not None:
            return logmel_logits(self.model, self.frames(x, self.samples_seen - self.window)[None])
        if self.cfg.mode == "kernel":
            return self.model(x[None], sample_rate=self.sample_rate)
        x = resample(x[None], self.sample_rate, self.model_rate)[:, : self.model.max_samples()]
        return self.model(x)

    def _probabilities(self) -> np.ndarray:
        if self.exported:  # at the export rate, or resampled to it (onnx_model.py)
            return self.model.probabilities(self.buffer[None], self.sample_rate)[0]
        with torch.no_grad(), torch_threads(self.threads if self.device.type == "cpu" else None):
            return torch.softmax(self._logits().float(), -1)[0].cpu().numpy()

    def _classify(self) -> HopResult:
        start = time.perf_counter()
        probabilities = self._probabilities()
        if not np.isfinite(probabilities).all():  # never a detection, nor a smoothed average, from NaN
            raise NonFiniteScores(f"the model gave non-finite scores (NaN or infinity) for the window ending at "
                                  f"{self.samples_seen / self.sample_rate:.2f} s: its weights are not usable")
        self.recent.append(probabilities)
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
    blocks: int = 0  # audio blocks offered by the callback
    dropped_blocks: int = 0  # of those, dropped because the backlog was full
    dropped_samples: int = 0
    hops: int = 0  # hops classified
    errors: int = 0  # failed hops or recorder writes; the stream goes on
    last_error: str = ""
    queued_samples: int = 0  # samples accepted into the queue (written by the audio thread only)
    processed_samples: int = 0  # samples the worker has finished with (written by the worker only)
    hop_ms: deque = field(default_factory=lambda: deque(maxlen=50), repr=False)  # recent hops' processing times

    def backlog_samples(self) -> int:
        """Audio accepted but not yet processed: how far the worker is behind the microphone."""
        return self.queued_samples - self.processed_samples

    def median_hop_ms(self) -> float:
        recent = list(self.hop_ms)
        return float(np.median(recent)) if recent else 0.0

    def summary(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "hop_ms"} | {"median_hop_ms": round(self.median_hop_ms(), 2)}


_STOP = object()


class StreamWorker:
    """An unbounded queue between an audio callback and a worker thread running a KeywordSpotter, with a bound on
    the audio waiting in it.

    `push` never blocks and never waits for the worker: when `max_seconds` of audio already wait, the block is
    dropped and counted (the audio thread must keep its deadline), and the next block that is queued carries the
    gap, so the spotter's clock (and the recording) advance over the lost audio instead of stitching its two sides
    together. On the worker thread, each block goes to `on_audio` (the recorder) and then the spotter; results go to
    `on_result(HopResult)`. A failing recorder or hop is counted in the stats and does not stop the stream, nor
    keep the block from the spotter.
    """

    def __init__(self, spotter: KeywordSpotter, on_result=None, max_seconds: float = 5.0, on_audio=None):
        self.spotter, self.on_result, self.on_audio = spotter, on_result, on_audio
        self.max_samples = max(1, round(max_seconds * spotter.sample_rate))
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.stats = StreamStats()
        self.first_audio = threading.Event()  # set by the first block the callback delivers
        self._gap = 0  # samples dropped since the last queued block (audio thread only)
        self._thread: threading.Thread | None = None
        self._discard = False
        self._progress = threading.Condition()  # notified after every block the worker finishes

    def push(self, block: np.ndarray) -> bool:
        """Called from the audio callback. Copies the block; returns False when it had to be dropped."""
        n = len(block)
        self.stats.blocks += 1
        if not self.first_audio.is_set():
            self.first_audio.set()
        if self.stats.backlog_samples() + n > self.max_samples:
            self.stats.dropped_blocks += 1
            self.stats.dropped_samples += n
            self._gap += n
            return False
        self.queue.put((self._gap, np.array(block, copy=True)))  # SimpleQueue.put never blocks
        self._gap = 0
        self.stats.queued_samples += n
        return True

    def backlog_seconds(self) -> float:
        return self.stats.backlog_samples() / self.spotter.sample_rate

    def dropped_seconds(self) -> float:
        return self.stats.dropped_samples / self.spotter.sample_rate

    def start(self) -> "StreamWorker":
        self._discard = False
        self._thread = threading.Thread(target=self._run, name="mrconv-stream", daemon=True)
        self._thread.start()
        return self

    def stop(self, drain: bool = True, timeout: float | None = 60.0) -> bool:
        """Stop the worker: with drain, after the blocks already queued; without, at the next block. Returns False
        when the worker had not ended after `timeout` seconds (a hop that hangs)."""
        self._discard = not drain
        self.queue.put(_STOP)
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while (item := self.queue.get()) is not _STOP:
            gap, block = item
            if not self._discard:
                self._process(gap, block)
            with self._progress:
                self.stats.processed_samples += len(block)
                self._progress.notify_all()

    def wait_processed(self, samples: int, timeout: float | None = None) -> bool:
        """Wait until the worker has finished with the first `samples` samples it accepted; False on timeout."""
        with self._progress:
            return self._progress.wait_for(lambda: self.stats.processed_samples >= samples, timeout)

    def _error(self, where: str, e: Exception) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{where}: {type(e).__name__}: {e}"

    def _process(self, gap: int, block: np.ndarray) -> None:
        if gap:
            self._record(np.zeros((gap,) + block.shape[1:], np.float32))  # the recording keeps time too
            self.spotter.skip(gap)
        self._record(block)
        try:
            for result in self.spotter.push(block):
                self.stats.hops += 1
                self.stats.hop_ms.append(result.latency_ms)
                if self.on_result is not None:
                    self.on_result(result)
        except Exception as e:  # one bad hop must not end a live stream
            self._error("hop", e)

    def _record(self, block: np.ndarray) -> None:
        if self.on_audio is None:
            return
        try:
            self.on_audio(block)
        except Exception as e:  # a full disk must not cost the spotter its audio
            self._error("recording", e)


class LagMonitor:
    """Says when live processing falls behind real time, by how much, why, and what to do.

    `check(behind_seconds, dropped_seconds, hop_ms)` with: how far processing lags the audio (the worker's backlog,
    or wall time minus stream time), the audio dropped so far, and the median processing time of a hop. A warning
    stays up for `hold_seconds` after the last sign of lag, so that it can be read.
    """

    def __init__(self, hop_seconds: float, fixes: str, tolerance_seconds: float = 1.0, hold_seconds: float = 10.0,
                 clock=time.monotonic):
        self.hop_seconds, self.fixes = hop_seconds, fixes
        self.tolerance, self.hold, self.clock = tolerance_seconds, hold_seconds, clock
        self.dropped = 0.0
        self.since = -math.inf  # when lag was last seen
        self.message: str | None = None

    def check(self, behind_seconds: float, dropped_seconds: float, hop_ms: float) -> str | None:
        budget_ms = self.hop_seconds * 1000
        new_drops = dropped_seconds > self.dropped
        self.dropped = dropped_seconds
        if behind_seconds > self.tolerance or new_drops or hop_ms > budget_ms:
            self.since = self.clock()
            signs = []
            if behind_seconds > self.tolerance:
                signs.append(f"{behind_seconds:.1f} s behind real time")
            if dropped_seconds > 0:
                signs.append(f"{dropped_seconds:.1f} s of audio dropped so far")
            cause = (f"each {budget_ms:.0f} ms hop takes {hop_ms:.0f} ms to process" if hop_ms > 0.5 * budget_ms else
                     f"a hop takes {hop_ms:.0f} ms of its {budget_ms:.0f} ms, but the machine is too busy to run it "
                     f"in time")
            self.message = f"Falling behind ({', '.join(signs) or 'too slow'}): {cause}. Fix: {self.fixes}."
        elif self.clock() - self.since > self.hold:
            self.message = None
        return self.message


def listen_fixes(sample_rate: int, hop_seconds: float) -> str:
    """What a `mrconv-audio listen` user can change when processing falls behind."""
    fixes = [f"--hop {max(0.5, 2 * hop_seconds):g} (fewer classifications a second)"]
    if sample_rate > 16000:
        fixes.append("--samplerate 16000 (less audio to read)")
    return " or ".join(fixes) + ", or close programs that keep the CPU busy"


DEMO_FIXES = "close programs that keep the server's CPU busy, or use the Clip tab, which has no deadline"


class ChunkLag:
    """Lag of a stream that arrives in chunks and is processed as it arrives (the demo's browser microphone): the
    wall time since the first chunk began against the seconds of audio received. When processing is slower than
    the audio, chunks wait in line and the difference grows. `update` -> LagMonitor's warning, or None."""

    def __init__(self, hop_seconds: float, fixes: str = DEMO_FIXES, clock=time.monotonic):
        self.clock = clock
        self.monitor = LagMonitor(hop_seconds, fixes, clock=clock)
        self.start: float | None = None
        self.received = 0.0
        self.hop_ms: deque = deque(maxlen=20)

    def update(self, chunk_seconds: float, hop_ms: list[float]) -> str | None:
        now = self.clock()
        if self.start is None:
            self.start = now - chunk_seconds  # the first chunk was being recorded for that long before it arrived
        self.received += chunk_seconds
        self.hop_ms.extend(hop_ms)
        median = float(np.median(self.hop_ms)) if self.hop_ms else 0.0
        return self.monitor.check(now - self.start - self.received, 0.0, median)
