"""`mrconv-audio listen`: live keyword spotting from a microphone (sounddevice), with a terminal view.

The audio callback only copies blocks into the StreamWorker's bounded queue; classification, recording and
drawing happen on other threads. On a terminal the view redraws in place; otherwise (piped, CI) every hop
with a detection is printed as one JSON line.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections import deque

import numpy as np

from mrconv_audio.streaming import HopResult, KeywordSpotter, StreamConfig, StreamWorker


def list_devices() -> str:
    import sounddevice as sd

    lines = []
    default_in = sd.default.device[0] if isinstance(sd.default.device, (list, tuple)) else sd.default.device
    for i, dev in enumerate(sd.query_devices()):
        if dev["max_input_channels"] > 0:
            mark = "*" if i == default_in else " "
            lines.append(f"{mark} {i:>3}  {dev['name']}  ({dev['max_input_channels']} in, "
                         f"{dev['default_samplerate']:.0f} Hz)")
    return "\n".join(lines) if lines else "no input devices found"


def bar(p: float, width: int = 30) -> str:
    full = int(round(p * width))
    return "█" * full + "·" * (width - full)


class TerminalView:
    """Top-3 classes with bars, recent detections, per-hop latency and dropped audio, redrawn in place."""

    def __init__(self, labels, stats, stream, interactive: bool):
        self.labels, self.stats, self.interactive, self.stream = labels, stats, interactive, stream
        self.latest: HopResult | None = None
        self.detections: deque = deque(maxlen=8)
        self.latencies: deque = deque(maxlen=50)
        self.lock = threading.Lock()

    def on_result(self, result: HopResult) -> None:
        with self.lock:
            self.latest = result
            self.latencies.append(result.latency_ms)
            if result.detection is not None:
                self.detections.appendleft(result.detection)
                if not self.interactive:
                    d = result.detection
                    print(json.dumps({"label": d.label, "score": round(d.score, 4), "time": round(d.time, 3),
                                      "latency_ms": round(d.latency_ms, 2)}), flush=True)

    def render(self) -> str:
        with self.lock:
            lines = [f"mrconv-audio listen — {self.stream}   (Ctrl-C to stop)", ""]
            if self.latest is None:
                lines.append("waiting for audio…")
            else:
                r = self.latest
                gate = "  [quiet]" if r.gated else ""
                lines.append(f"t = {r.end_time:7.2f} s   level {r.rms_dbfs:6.1f} dBFS{gate}")
                for label, p in r.top(self.labels, 3):
                    lines.append(f"  {label:<12} {bar(p)} {p:5.2f}")
            lat = sorted(self.latencies)
            median = lat[len(lat) // 2] if lat else float("nan")
            lines += ["", f"latency per hop: median {median:6.1f} ms   dropped audio: {self.stats.dropped_samples} "
                      f"samples in {self.stats.dropped_blocks} blocks   errors: {self.stats.errors}", "",
                      "recent detections:"]
            lines += [f"  {d.time:7.2f} s  {d.label:<12} {d.score:.2f}" for d in self.detections] or ["  (none yet)"]
            return "\n".join(lines)


def run_listen(model, device=None, samplerate=None, threshold=0.6, hop=0.25, record=None, compute_device="auto",
               duration=None, blocksize=0, out=sys.stdout, mode="kernel") -> dict:
    """Listen until Ctrl-C (or `duration` seconds). Returns the stream's statistics."""
    import sounddevice as sd
    import soundfile as sf

    info = sd.query_devices(device, "input")
    rate = int(samplerate or info["default_samplerate"])
    spotter = KeywordSpotter(model, rate, StreamConfig(hop_seconds=hop, threshold=threshold, mode=mode),
                             device=compute_device)
    recorder = sf.SoundFile(record, "w", samplerate=rate, channels=1, subtype="PCM_16") if record else None
    on_audio = (lambda block: recorder.write(KeywordSpotter.mono(block))) if recorder else None
    interactive = out.isatty()
    view = TerminalView(spotter.labels, None, f"{info['name']} at {rate} Hz, model on {spotter.device}", interactive)
    worker = StreamWorker(spotter, on_result=view.on_result, on_audio=on_audio)
    view.stats = worker.stats
    status_flags = {"overflow": 0}

    def callback(indata, frames, time_info, status):  # audio thread: copy and return, never block
        if status.input_overflow:
            status_flags["overflow"] += 1
        worker.push(indata)

    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *a: stop.set())
    worker.start()
    try:
        with sd.InputStream(device=device, channels=1, samplerate=rate, dtype="float32", blocksize=blocksize,
                            callback=callback):
            print(json.dumps({"listening": info["name"], "sample_rate": rate}), file=sys.stderr, flush=True)
            start = time.monotonic()
            while not stop.is_set() and (duration is None or time.monotonic() - start < duration):
                if interactive:
                    out.write("\x1b[H\x1b[J" + view.render() + "\n")
                    out.flush()
                stop.wait(0.1)
    finally:
        signal.signal(signal.SIGINT, previous)
        worker.stop(drain=True)
        if recorder is not None:
            recorder.close()
    stats = {**vars(worker.stats), "device_overflows": status_flags["overflow"], "sample_rate": rate}
    if interactive:
        out.write("\n" + view.render() + "\n")
    print(json.dumps({"stopped": True, **stats}), file=sys.stderr)
    return stats


def detect_file(model, path, hop=0.1, threshold=0.6, mode="kernel", compute_device="auto", progress=None) -> dict:
    """Run the streaming engine over a recording; returns {"file", "sample_rate", "duration", "detections"}.
    `progress(samples_done, samples_total)`, if given, is called after every hop."""
    from mrconv_audio.data.audio import load_audio

    x, rate = load_audio(path)
    spotter = KeywordSpotter(model, rate, StreamConfig(hop_seconds=hop, threshold=threshold, mode=mode),
                             device=compute_device)
    results = []
    for i in range(0, len(x), spotter.hop):
        results += spotter.push(x[i : i + spotter.hop])
        if progress is not None:
            progress(min(i + spotter.hop, len(x)), len(x))
    # Flush: let the last word leave through a window's worth of silence.
    results += spotter.push(np.zeros(spotter.window, np.float32))
    found = [r.detection for r in results if r.detection is not None]
    return {"file": str(path), "sample_rate": rate, "duration": round(len(x) / rate, 3),
            "detections": [{"time": round(d.time, 3), "label": d.label, "score": round(d.score, 4)} for d in found]}
