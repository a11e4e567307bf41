"""`mrconv-audio listen`: live keyword spotting from a microphone (sounddevice), with a terminal view.

The audio callback only copies blocks into the StreamWorker's queue; classification, recording and drawing happen
on other threads. Before the stream opens, a few hops of noise warm the model up and measure what a hop costs. On a
terminal the view redraws in place; otherwise (piped, CI) every detection is printed to stdout as one JSON line,
and the stream's state (stream time, backlog, dropped audio, cost per hop, a warning when it falls behind) to
stderr as one JSON line a second.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections import deque

import numpy as np

from app.microphone import DeviceLost, InputDevice, check_rate, open_recording, portaudio_error, query_input
from mrconv_audio.streaming import HopResult, KeywordSpotter, LagMonitor, StreamConfig, StreamWorker, listen_fixes


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

    def __init__(self, labels, worker, stream, interactive: bool):
        self.labels, self.worker, self.interactive, self.stream = labels, worker, interactive, stream
        self.latest: HopResult | None = None
        self.detections: deque = deque(maxlen=8)
        self.warning: str | None = None
        self.lock = threading.Lock()

    def on_result(self, result: HopResult) -> None:
        with self.lock:
            self.latest = result
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
            stats = self.worker.stats
            lines += ["", f"processing per hop: median {stats.median_hop_ms():6.1f} ms   behind: "
                      f"{self.worker.backlog_seconds():4.1f} s   dropped audio: {self.worker.dropped_seconds():.1f} s "
                      f"in {stats.dropped_blocks} blocks   errors: {stats.errors}"]
            if self.warning:
                lines += ["", f"\x1b[1;31m⚠ {self.warning}\x1b[0m" if self.interactive else f"WARNING: {self.warning}"]
            lines += ["", "recent detections:"]
            lines += [f"  {d.time:7.2f} s  {d.label:<12} {d.score:.2f}" for d in self.detections] or ["  (none yet)"]
            return "\n".join(lines)


def warm_up(spotter: KeywordSpotter, seconds: float = 2.0) -> float:
    """Run `seconds` of quiet noise through the spotter (builds the kernel caches, so the first real hops are not
    slow) and return the median processing time of a hop in ms; the spotter is reset afterwards."""
    noise = (0.001 * np.random.default_rng(0).standard_normal(round(seconds * spotter.sample_rate))).astype(np.float32)
    hops = [r.latency_ms for r in spotter.push(noise)]
    spotter.reset()
    return float(np.median(hops[1:] or hops))


def run_listen(model, device=None, samplerate=None, threshold=0.6, hop=0.25, record=None, compute_device="auto",
               duration=None, blocksize=0, out=sys.stdout, mode="kernel", err=sys.stderr, stall_seconds=5.0,
               reopen_seconds=15.0) -> dict:
    """Listen until Ctrl-C (or `duration` seconds). Returns the stream's statistics. Bad settings (device, rate,
    recording path) raise ValueError before the stream starts; a stream that stops delivering audio for
    `stall_seconds` is reopened, and DeviceLost is raised when that fails for `reopen_seconds`."""
    info = query_input(device)
    rate = int(samplerate or info["default_samplerate"])
    try:
        spotter = KeywordSpotter(model, rate, StreamConfig(hop_seconds=hop, threshold=threshold, mode=mode),
                                 device=compute_device)
    except ValueError as e:  # name the option that sets the rate
        raise ValueError(f"--samplerate {rate}: {e}" if samplerate else
                         f"the device's rate, {rate} Hz: {e}; choose another with --samplerate") from None
    check_rate(device, rate)
    monitor = LagMonitor(hop, listen_fixes(rate, hop))
    recorder = open_recording(record, rate) if record else None
    try:
        hop_ms = warm_up(spotter)
    except BaseException:
        if recorder is not None:
            recorder.close()
        raise
    if hop_ms > 0.5 * hop * 1000:  # say so before the stream starts, not after it has fallen behind
        print(json.dumps({"warning": f"a hop takes {hop_ms:.0f} ms of its {hop * 1000:.0f} ms on this machine; "
                                     f"listening may fall behind. Fix: {monitor.fixes}."}), file=err, flush=True)
    on_audio = (lambda block: recorder.write(KeywordSpotter.mono(block))) if recorder else None
    interactive = out.isatty()
    view = TerminalView(spotter.labels, None, f"{info['name']} at {rate} Hz, model on {spotter.device}", interactive)
    worker = StreamWorker(spotter, on_result=view.on_result, on_audio=on_audio)
    view.worker = worker
    mic = InputDevice(device, rate, worker.push, stall_seconds=stall_seconds)
    events = {"device_lost": 0, "reopened": 0}
    lost = None

    def status() -> dict:
        return {"stream_seconds": round(spotter.samples_seen / rate, 3),
                "behind_seconds": round(worker.backlog_seconds(), 3),
                "dropped_seconds": round(worker.dropped_seconds(), 3),
                "median_hop_ms": round(worker.stats.median_hop_ms(), 2), "warning": view.warning}

    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *a: stop.set())
    worker.start()
    try:
        try:
            mic.open()
        except portaudio_error() as e:
            raise ValueError(f"cannot open the input device {info['name']!r} at {rate} Hz: {e}") from None
        print(json.dumps({"listening": info["name"], "sample_rate": rate, "warm_hop_ms": round(hop_ms, 2)}),
              file=err, flush=True)
        start = last_status = time.monotonic()
        while not stop.is_set() and (duration is None or time.monotonic() - start < duration):
            problem = mic.problem()
            if problem is not None:  # say what happened, then try to get the device back
                events["device_lost"] += 1
                print(json.dumps({"error": f"{problem}; reopening {info['name']!r} "
                                           f"(for up to {reopen_seconds:g} s)"}), file=err, flush=True)
                if not mic.reopen(reopen_seconds, stop):
                    if stop.is_set():
                        break
                    lost = f"{problem}; could not reopen {info['name']!r} in {reopen_seconds:g} s"
                    break
                events["reopened"] += 1
                print(json.dumps({"reopened": info["name"], "sample_rate": rate}), file=err, flush=True)
            view.warning = monitor.check(worker.backlog_seconds(), worker.dropped_seconds(),
                                         worker.stats.median_hop_ms())
            if interactive:
                out.write("\x1b[H\x1b[J" + view.render() + "\n")
                out.flush()
            elif time.monotonic() - last_status >= 1.0:
                last_status = time.monotonic()
                print(json.dumps({"status": status()}), file=err, flush=True)
            stop.wait(0.1)
    finally:
        signal.signal(signal.SIGINT, previous)
        mic.close()
        worker.stop(drain=True)
        if recorder is not None:
            recorder.close()
    stats = {**worker.stats.summary(), "device_overflows": mic.overflows, "sample_rate": rate,
             "clipped_samples": spotter.clipped, "stream_seconds": round(spotter.samples_seen / rate, 3),
             "warning": view.warning, **events, "error": lost}
    if interactive:
        out.write("\n" + view.render() + "\n")
    print(json.dumps({"stopped": True, **stats}), file=err, flush=True)
    if lost is not None:
        raise DeviceLost(lost)
    return stats


def detect_file(model, path, hop=0.1, threshold=0.6, mode="kernel", compute_device="auto", progress=None) -> dict:
    """Run the streaming engine over a recording; returns {"file", "sample_rate", "duration", "detections"}.
    `progress(samples_done, samples_total)`, if given, is called after every hop."""
    from mrconv_audio.audiofile import load_audio  # torch-free: the light runtime reads recordings too
    from mrconv_audio.conditioning import fit_full_scale, full_scale_notes

    x, rate = load_audio(path)
    x, gain = fit_full_scale(x)
    warnings = full_scale_notes(gain)
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
    if spotter.clipped:
        warnings.append(f"{spotter.clipped} samples beyond [-1, 1] after DC removal were clipped")
    return {"file": str(path), "sample_rate": rate, "duration": round(len(x) / rate, 3),
            "detections": [{"time": round(d.time, 3), "label": d.label, "score": round(d.score, 4)} for d in found],
            "warnings": warnings}
