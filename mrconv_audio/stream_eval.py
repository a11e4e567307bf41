"""Streaming evaluation: false accepts per hour and miss rate, the numbers keyword-spotter users judge.

    build_stream   a split's clips laid end to end (seeded order, gaps and levels) over a low noise floor,
                   with the events: where each clip is and, for words, where the loud part is
    record         one model pass over the stream with the live engine (KeywordSpotter), keeping per hop what
                   its decision needs: smoothed probabilities, window level, loudest moment
    replay         the engine's own decision (streaming.Decider) over the recorded hops, at any threshold
    score          detections against events: hits, misses, false accepts by what was playing
    evaluate_stream  a built stream: one model pass, the configured threshold, a curve over thresholds and the best
                     operating point

Scoring: a keyword event is hit by the first detection of its label whose time (the loudest moment of the window
that fired) lies within its loud span widened by `tolerance` seconds each side (a detection within reach of two
such events takes the one whose widened span ends first). Every other detection is a false accept, counted under
what was playing at its time: "other_keyword" or "same_keyword" when it is within a keyword event's widened span or
clip (same_keyword: a repeat, or the word found outside the tolerance), "unknown" (an _unknown_ word's clip),
"silence" (a _silence_/noise clip), or "gap" (only the background).
"""
from __future__ import annotations

import bisect
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .data.speech_commands import SILENCE, UNKNOWN
from .streaming import Decider, Detection, KeywordSpotter, StreamConfig

DEFAULT_THRESHOLDS = tuple(round(0.30 + 0.01 * i, 2) for i in range(70))  # 0.30 .. 0.99
TARGET_FA_PER_HOUR, TARGET_MISS_RATE = 2.0, 0.10  # the project's target operating point
FA_CONTEXTS = ("other_keyword", "same_keyword", "unknown", "silence", "gap")


# ---------------------------------------------------------------------------------------------------- the stream

@dataclass
class Event:
    label: str
    kind: str  # "keyword", "unknown" or "silence"
    start: float  # seconds: the loud part of the clip (where the word is); the whole clip for silence
    end: float
    offset: int  # first sample of the clip in the stream
    length: int  # samples of the clip
    clip: int  # index of the clip in the split
    gain_db: float
    sample_rate: int

    @property
    def clip_start(self) -> float:
        return self.offset / self.sample_rate

    @property
    def clip_end(self) -> float:
        return (self.offset + self.length) / self.sample_rate


@dataclass
class Stream:
    audio: np.ndarray  # (samples,) float32 in [-1, 1]
    sample_rate: int
    events: list[Event]  # in stream order
    passes: int  # times the split's clips were gone through

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate


def kind_of(label: str) -> str:
    return {SILENCE: "silence", UNKNOWN: "unknown"}.get(label, "keyword")


def loud_span(clip: np.ndarray, rate: int, below_peak_db: float = 30.0, frame_seconds: float = 0.01) -> tuple[int, int]:
    """[first, last) sample of a clip's loud part: from the first to the last 10 ms frame within `below_peak_db`
    of the loudest frame (the clips are 1 s with the word somewhere inside, near-silence around it)."""
    frame = max(1, round(frame_seconds * rate))
    n = math.ceil(len(clip) / frame)
    padded = np.zeros(n * frame)
    padded[: len(clip)] = clip
    energy = np.square(padded).reshape(n, frame).mean(axis=1)
    if energy.max() <= 0:
        return 0, len(clip)
    loud = np.flatnonzero(energy >= energy.max() * 10 ** (-below_peak_db / 10))
    return int(loud[0]) * frame, min(len(clip), (int(loud[-1]) + 1) * frame)


def noise_floor(split, samples: int, level_dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """`samples` of background at an RMS of `level_dbfs`: the split's _silence_ clips end to end (repeated as
    needed), or white noise when it has none (or they are digital silence)."""
    silence = [i for i, y in enumerate(split.labels) if split.label_names[y] == SILENCE]
    source = np.concatenate([split.audio[i] for i in rng.permutation(silence)]).astype(np.float32) if silence else None
    if source is None or not np.any(source):
        source = rng.standard_normal(split.sample_rate).astype(np.float32)
    rms = float(np.sqrt(np.mean(np.square(source, dtype=np.float64))))
    floor = np.resize(source, samples)  # tiles the source
    floor *= np.float32(10 ** (level_dbfs / 20) / rms)
    return floor


def build_stream(split, seed: int = 0, minutes: float | None = None, gap_seconds=(0.5, 3.0), gain_db=(-10.0, 6.0),
                 floor_dbfs: float | None = -55.0, tail_seconds: float = 1.0) -> Stream:
    """The split's clips in a seeded random order, each after a random gap and at a random gain, over a noise floor
    (None: digital silence between clips). Every clip once; with `minutes`, clips are added (the split gone through
    again, freshly shuffled, as often as needed) until the stream is that long. `tail_seconds` of background at the
    end let the last clip leave the engine's window."""
    if len(split) == 0:
        raise ValueError("the split has no clips to build a stream from")
    rate, n_clips = split.sample_rate, len(split)
    clip_length = split.audio.shape[1]
    rng = np.random.default_rng(seed)
    target = None if minutes is None else round(minutes * 60 * rate)
    placements = []  # (clip index, offset, gain in dB)
    position = round(rng.uniform(*gap_seconds) * rate)
    passes = 0
    while True:
        passes += 1
        for i in rng.permutation(n_clips):
            placements.append((int(i), position, float(rng.uniform(*gain_db))))
            position += clip_length + round(rng.uniform(*gap_seconds) * rate)
            if target is not None and position >= target:
                break
        if target is None or position >= target:
            break
    total = position + round(tail_seconds * rate)
    audio = np.zeros(total, np.float32) if floor_dbfs is None else noise_floor(split, total, floor_dbfs, rng)
    events = []
    for i, offset, gain in placements:
        clip = split.audio[i].astype(np.float32) / np.float32(32768)
        audio[offset : offset + clip_length] += clip * np.float32(10 ** (gain / 20))
        label = split.label_names[split.labels[i]]
        kind = kind_of(label)
        first, last = (0, clip_length) if kind == "silence" else loud_span(clip, rate)
        events.append(Event(label, kind, (offset + first) / rate, (offset + last) / rate, offset, clip_length, i,
                            gain, rate))
    np.clip(audio, -1.0, 1.0, out=audio)
    return Stream(audio, rate, events, passes)


# ---------------------------------------------------------------------------------- one model pass, many decisions

@dataclass
class HopTrace:
    """What the engine's decision sees at each hop, recorded once."""
    labels: list[str]
    end_times: np.ndarray  # (hops,) seconds from the stream's start at the end of the window
    probabilities: np.ndarray  # (hops, classes) smoothed
    levels: np.ndarray  # (hops,) window RMS, dB full scale
    word_times: np.ndarray  # (hops,) the window's loudest moment, seconds
    latency_ms: np.ndarray  # (hops,)
    detections: list[Detection] = field(default_factory=list)  # what the engine fired while recording

    def __len__(self) -> int:
        return len(self.end_times)


def record(model, audio: np.ndarray, sample_rate: int, config: StreamConfig, device: str = "auto",
           log=None) -> HopTrace:
    """Run the live engine over `audio`, one hop at a time, keeping every hop's inputs to the decision."""
    spotter = KeywordSpotter(model, sample_rate, config, device=device)
    hops = len(audio) // spotter.hop
    rows, found = [], []
    for h in range(hops):
        (result,) = spotter.push(audio[h * spotter.hop : (h + 1) * spotter.hop])
        rows.append((result.end_time, result.probabilities, result.rms_dbfs, spotter.loudest_time(result.end_time),
                     result.latency_ms))
        if result.detection is not None:
            found.append(result.detection)
        if log and hops >= 1000 and (h + 1) % (hops // 10) == 0:
            log(f"stream: {h + 1}/{hops} hops")
    end_times, probs, levels, word_times, latency = zip(*rows) if rows else ([], [], [], [], [])
    n_classes = len(spotter.labels)
    return HopTrace(spotter.labels, np.array(end_times, np.float64),
                    np.array(probs, np.float32).reshape(len(rows), n_classes), np.array(levels, np.float64),
                    np.array(word_times, np.float64), np.array(latency, np.float64), found)


def replay(trace: HopTrace, config: StreamConfig) -> list[Detection]:
    """The detections the engine would make with `config` (e.g. another threshold) over the recorded hops. The
    model-side settings (hop, smoothing, mode) must be those the trace was recorded with."""
    decider = Decider(trace.labels, config)
    found = []
    for h in range(len(trace)):
        word_time = float(trace.word_times[h])
        detection = decider.decide(trace.probabilities[h], float(trace.end_times[h]), float(trace.levels[h]),
                                   lambda: word_time, float(trace.latency_ms[h]))
        if detection is not None:
            found.append(detection)
    return found


# ---------------------------------------------------------------------------------------------------------- scoring

@dataclass
class Score:
    threshold: float | None
    hours: float
    keyword_events: int
    hits: int
    misses: int
    miss_rate: float  # misses / keyword events (nan without keyword events)
    false_accepts: int
    fa_per_hour: float
    fa_by_context: dict[str, int]
    misses_by_label: dict[str, int]


def score(detections: list, events: list[Event], seconds: float, tolerance: float = 0.5,
          threshold: float | None = None) -> Score:
    """Detections (anything with .label and .time) against the stream's events; see the module docstring."""
    events = sorted(events, key=lambda e: e.offset)
    keywords = [e for e in events if e.kind == "keyword"]
    clip_starts = [e.clip_start for e in events]
    labels = np.array([e.label for e in keywords], dtype=object)
    lo = np.array([e.start - tolerance for e in keywords])
    hi = np.array([e.end + tolerance for e in keywords])
    hit = np.zeros(len(keywords), bool)
    contexts = Counter()
    for d in sorted(detections, key=lambda d: d.time):
        near = (lo <= d.time) & (d.time <= hi)
        candidates = np.flatnonzero(near & (labels == d.label) & ~hit)
        if len(candidates):  # the one whose widened span ends first: in time order, this matches the most events
            hit[candidates[int(np.argmin(hi[candidates]))]] = True
        else:
            contexts[context_of(d, events, clip_starts, near, labels)] += 1
    misses = Counter(e.label for e, h in zip(keywords, hit) if not h)
    hours = seconds / 3600
    false_accepts = sum(contexts.values())
    return Score(threshold, hours, len(keywords), int(hit.sum()), int(len(keywords) - hit.sum()),
                 float(len(keywords) - hit.sum()) / len(keywords) if keywords else math.nan, false_accepts,
                 false_accepts / hours if hours > 0 else math.nan,
                 {c: contexts.get(c, 0) for c in FA_CONTEXTS}, dict(sorted(misses.items())))


def context_of(detection, events: list[Event], clip_starts: list[float], near_keyword: np.ndarray,
               keyword_labels: np.ndarray) -> str:
    """What was playing when a false accept fired: a keyword event whose widened span holds its time first, then
    the clip that holds it, else the gap between clips. `events` in stream order (clips do not overlap)."""
    if near_keyword.any():
        return "same_keyword" if (keyword_labels[near_keyword] == detection.label).any() else "other_keyword"
    i = bisect.bisect_right(clip_starts, detection.time) - 1  # the last clip that started by then
    if i < 0 or detection.time >= events[i].clip_end:
        return "gap"
    e = events[i]
    if e.kind == "keyword":
        return "same_keyword" if e.label == detection.label else "other_keyword"
    return e.kind


def operating_point(curve: list[Score], max_fa_per_hour: float = TARGET_FA_PER_HOUR) -> Score | None:
    """The lowest miss rate among thresholds with at most `max_fa_per_hour` (ties: fewer FA/h, then the higher
    threshold); None when no threshold gets there."""
    allowed = [s for s in curve if s.fa_per_hour <= max_fa_per_hour and not math.isnan(s.miss_rate)]
    return min(allowed, key=lambda s: (s.miss_rate, s.fa_per_hour, -s.threshold), default=None)


# ------------------------------------------------------------------------------------------------------ all of it

@dataclass
class StreamReport:
    stream: dict  # seconds, hours, sample_rate, passes, clips by kind (the CLI adds seed and minutes)
    engine: dict  # the StreamConfig the model pass used
    tolerance: float
    at_threshold: Score
    curve: list[Score]
    best: Score | None  # operating_point(curve)
    target: dict = field(default_factory=lambda: {"max_fa_per_hour": TARGET_FA_PER_HOUR,
                                                  "max_miss_rate": TARGET_MISS_RATE})

    def to_dict(self) -> dict:
        met = self.best is not None and self.best.miss_rate <= TARGET_MISS_RATE
        return _finite({"stream": self.stream, "engine": self.engine, "tolerance_seconds": self.tolerance,
                        "at_threshold": asdict(self.at_threshold),
                        "curve": [{"threshold": s.threshold, "fa_per_hour": s.fa_per_hour, "miss_rate": s.miss_rate,
                                   "false_accepts": s.false_accepts, "misses": s.misses} for s in self.curve],
                        "operating_point": asdict(self.best) if self.best else None,
                        "target": {**self.target, "met": met}})


def _finite(value):
    """JSON has no NaN: nan -> None, recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def evaluate_stream(model, stream: Stream, config: StreamConfig | None = None, thresholds=DEFAULT_THRESHOLDS,
                    tolerance: float = 0.5, device: str = "auto", log=print) -> StreamReport:
    """Run the model once over the stream, score the configured threshold and every threshold of the curve."""
    config = config or StreamConfig()
    kinds = Counter(e.kind for e in stream.events)
    log(f"stream: {stream.seconds / 60:.1f} min, {kinds['keyword']} keywords, {kinds['unknown']} unknown words, "
        f"{kinds['silence']} noise clips")
    trace = record(model, stream.audio, stream.sample_rate, config, device=device, log=log)
    at = lambda t: score(replay(trace, replace(config, threshold=t)), stream.events, stream.seconds, tolerance, t)
    curve = [at(t) for t in thresholds]
    summary = {"seconds": round(stream.seconds, 3), "hours": stream.seconds / 3600, "sample_rate": stream.sample_rate,
               "passes": stream.passes, "clips": dict(kinds)}
    return StreamReport(summary, asdict(config), tolerance, at(config.threshold), curve, operating_point(curve))


def report_lines(report: StreamReport) -> list[str]:
    s = report.at_threshold
    lines = [f"{report.stream['hours']:.3f} h of stream, {s.keyword_events} keywords",
             f"threshold {s.threshold:.2f}: miss rate {s.miss_rate:.3f} ({s.misses}), "
             f"{s.fa_per_hour:.1f} FA/h ({s.false_accepts}: "
             + ", ".join(f"{k} {v}" for k, v in s.fa_by_context.items()) + ")"]
    b = report.best
    lines.append(f"best with <= {TARGET_FA_PER_HOUR:g} FA/h: " + (
        f"threshold {b.threshold:.2f}, miss rate {b.miss_rate:.3f}, {b.fa_per_hour:.1f} FA/h" if b else "none"))
    return lines


def plot_curve(report: StreamReport, path, title: str = "") -> None:
    """Miss rate against false accepts per hour over the thresholds (symmetric log x: 0 FA/h stays visible)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axvspan(0, TARGET_FA_PER_HOUR, ymax=1, color="0.93")
    ax.axhline(100 * TARGET_MISS_RATE, color="0.6", lw=0.8, ls=":")
    ax.axvline(TARGET_FA_PER_HOUR, color="0.6", lw=0.8, ls=":")
    ax.plot([s.fa_per_hour for s in report.curve], [100 * s.miss_rate for s in report.curve], ".-",
            label="thresholds")
    for s in report.curve[::10]:
        ax.annotate(f"{s.threshold:.2f}", (s.fa_per_hour, 100 * s.miss_rate), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    a = report.at_threshold
    ax.plot([a.fa_per_hour], [100 * a.miss_rate], "r*", ms=10, label=f"threshold {a.threshold:.2f}")
    if report.best is not None:
        b = report.best
        ax.plot([b.fa_per_hour], [100 * b.miss_rate], "go", mfc="none", ms=10, label=f"best: {b.threshold:.2f}")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)
    ax.set_xlabel("false accepts per hour")
    ax.set_ylabel("miss rate (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------------- CLI

def as_list(roots) -> list[str]:
    """--data-root as a list of strings, whether argparse gave one root or several."""
    return [str(roots)] if isinstance(roots, (str, Path)) else [str(r) for r in roots]


def run_stream_evaluation(args, model, log=print) -> StreamReport:
    """`mrconv-audio evaluate --stream`: the split of --data-root as one long stream through the live engine."""
    from .data.cache import load_split
    from .data.speech_commands import SpeechCommands
    from .evaluate import default_model_dir, infer_task

    if not args.data_root:
        raise ValueError("--stream needs --data-root (a Speech Commands root), not --folder")
    task = args.task or infer_task(model.labels)
    # Every unknown-word clip of the split (the accuracy split keeps 10%): what a live spotter hears most is speech
    # that is not a keyword.
    split = load_split(SpeechCommands(args.data_root), task, args.split, sample_rate=16000,
                       cache_dir=args.cache_dir, log=log, unknown_fraction=None)
    config = StreamConfig(hop_seconds=args.hop, threshold=args.threshold, mode=args.mode or "kernel")
    stream = build_stream(split, seed=args.seed, minutes=args.minutes)
    report = evaluate_stream(model, stream, config, device=args.device, log=log)
    report.stream.update(seed=args.seed, minutes=args.minutes)
    for line in report_lines(report):
        log(line)
    model_dir = str(args.model or default_model_dir())
    if args.json_out:
        payload = {"model": model_dir, "data_root": as_list(args.data_root), "split": args.split, "task": task,
                   **report.to_dict()}
        Path(args.json_out).write_text(json.dumps(payload, indent=1) + "\n")
    if args.plot:
        plot_curve(report, args.plot, title=f"{Path(model_dir).name}, {args.split} stream")
    return report
