"""`mrconv-audio demo`: a Gradio web demo over mrconv_audio.streaming.

Tabs: a live microphone (streaming, label and top-k updating as you speak, detections listed), a clip (record or
upload at any rate: top-k, waveform, spectrogram, a detection timeline for clips longer than the window), and the
model (classes, rate, device, latency, merged kernels per layer). The `predict` API takes an audio file and returns
the label and confidences. Bad input raises gr.Error: the page shows the message and the server keeps serving.
"""
from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no outside connections

import numpy as np
import torch

from mrconv_audio.data.audio import AudioError, fit_length, load_audio
from mrconv_audio.streaming import ChunkLag, KeywordSpotter, StreamConfig, rms_dbfs

EXAMPLES = Path(__file__).resolve().parent / "examples"
MAX_CLIP_SECONDS = 60.0
MAX_FILE_MB = 20
SILENCE_DBFS = -60.0


class InputProblem(ValueError):
    """Input the demo cannot classify; the message is shown to the user."""


class ClipAnalyzer:
    """Everything the demo computes, without Gradio: testable on its own."""

    def __init__(self, model, compute_device: str = "auto", top_k: int = 5):
        from mrconv_audio.device import pick_device

        self.device = pick_device(compute_device)
        if not model.reparameterized:
            model.reparameterize()
        self.model = model.to(self.device).eval()
        self.labels = list(model.labels)
        self.top_k = min(top_k, len(self.labels))
        # The rates the demo accepts: what the model can run at, within the 4-96 kHz that real audio comes at.
        low, high = model.rate_range()
        self.rate_range = (max(4000, low), min(96000, high))

    def read(self, path) -> tuple[np.ndarray, int]:
        if path is None:
            raise InputProblem("No audio: record or upload a clip first.")
        try:
            x, rate = load_audio(path, max_seconds=MAX_CLIP_SECONDS)
        except AudioError as e:
            reason = str(e).split(": ", 1)[-1]  # the message without the server's temporary path
            raise InputProblem(f"Cannot use this file: {re.sub(r'Error opening .*?: ', '', reason)}") from None
        return self.check(x, rate)

    def check(self, x: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
        low, high = self.rate_range
        if not low <= rate <= high:
            raise InputProblem(f"Sample rate {rate} Hz is outside what this model runs at ({low:g} to {high:g} Hz).")
        if len(x) < rate * 0.05:
            raise InputProblem(f"The clip is too short ({len(x) / rate * 1000:.0f} ms); record at least 0.1 s.")
        if not np.isfinite(x).all():
            raise InputProblem("The clip contains NaN or infinite samples.")
        if rms_dbfs(x) < SILENCE_DBFS:
            raise InputProblem(f"The clip is silent (level {rms_dbfs(x):.0f} dBFS); nothing to classify.")
        return x, rate

    @torch.no_grad()
    def probabilities(self, window: np.ndarray, rate: int) -> tuple[dict, float]:
        """Class probabilities for one window at its own rate, and the latency in ms."""
        x = fit_length(torch.from_numpy(window), self.model.max_samples(rate))[None].to(self.device)
        start = time.perf_counter()
        probs = torch.softmax(self.model(x, sample_rate=rate).float(), -1)[0].cpu().numpy()
        latency = (time.perf_counter() - start) * 1e3
        return {label: float(p) for label, p in zip(self.labels, probs)}, latency

    def classify(self, path) -> dict:
        """A clip: top-k of its loudest window, and detections along it when it is longer than the window."""
        x, rate = self.read(path)
        window = self.model.max_samples(rate)
        start = loudest_window_start(x, window)
        probs, latency = self.probabilities(x[start : start + window], rate)
        timeline = []
        if len(x) > window:
            spotter = KeywordSpotter(self.model, rate, StreamConfig(hop_seconds=0.1), device=str(self.device))
            results = spotter.push(x) + spotter.push(np.zeros(window, np.float32))
            timeline = [[round(r.detection.time, 2), r.detection.label, round(r.detection.score, 3)]
                        for r in results if r.detection is not None]
        top = dict(sorted(probs.items(), key=lambda kv: -kv[1])[: self.top_k])
        return {"label": max(probs, key=probs.get), "confidences": top, "sample_rate": rate,
                "duration": len(x) / rate, "latency_ms": latency, "timeline": timeline, "audio": x}


def loudest_window_start(x: np.ndarray, window: int) -> int:
    """Start of the window with the most energy (the word, in a clip longer than the window)."""
    if len(x) <= window:
        return 0
    energy = np.concatenate([[0.0], np.cumsum(np.square(x, dtype=np.float64))])
    sums = energy[window:] - energy[:-window]
    return int(np.argmax(sums))


def waveform_figure(x: np.ndarray, rate: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
    t = np.arange(len(x)) / rate
    ax1.plot(t, x, linewidth=0.5)
    ax1.set_ylabel("amplitude")
    ax1.set_title(f"{len(x) / rate:.2f} s at {rate} Hz")
    n_fft = 2 ** int(round(math.log2(rate * 0.025)))
    spec = torch.stft(torch.from_numpy(x), n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft),
                      return_complex=True).abs()
    db = 20 * torch.log10(spec + 1e-6).numpy()
    ax2.imshow(db, origin="lower", aspect="auto", extent=[0, len(x) / rate, 0, rate / 2000], cmap="magma",
               vmin=db.max() - 80, vmax=db.max())
    ax2.set_ylabel("kHz")
    ax2.set_xlabel("time (s)")
    fig.tight_layout()
    return fig


def kernel_figure(model):
    """The merged kernel of every layer (a few channels), lag in ms (negative: anti-causal). A log-mel model's kernels
    run over frames (frame_rate per second), a waveform model's over samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = model.blocks
    fig, axes = plt.subplots(len(blocks), 1, figsize=(8, 1.6 * len(blocks)), squeeze=False)
    cfg = model.config
    rate = cfg.frame_rate if cfg.frontend == "logmel" else cfg.sample_rate  # kernel taps per second
    for i, (ax, block) in enumerate(zip(axes[:, 0], blocks)):
        with torch.no_grad():
            k = block.conv.merged_kernel().float().cpu()  # (directions, H, taps)
        taps = k.shape[-1]
        for c in range(min(4, k.shape[1])):
            lag = np.arange(taps) / rate * 1000
            ax.plot(lag, k[0, c].numpy(), linewidth=0.6)
            if k.shape[0] == 2:
                ax.plot(-(np.arange(taps) + 1) / rate * 1000, k[1, c].numpy(), linewidth=0.6)
        ax.set_xscale("symlog", linthresh=5)
        ax.set_ylabel(f"layer {i + 1}")
    axes[-1, 0].set_xlabel("lag (ms, symmetric log scale)")
    fig.suptitle("merged kernels (4 channels per layer)")
    fig.tight_layout()
    return fig


def build_demo(model, model_dir: str, compute_device: str = "auto"):
    import gradio as gr

    analyzer = ClipAnalyzer(model, compute_device)
    rng = np.random.default_rng(0)
    for rate in sorted({model.config.sample_rate, 16000, 44100, 48000}):  # build the kernel caches of common rates
        analyzer.probabilities(rng.standard_normal(model.max_samples(rate)).astype(np.float32) * 0.1, rate)
    warm = rng.standard_normal(model.max_samples()).astype(np.float32) * 0.1
    _, clip_latency = analyzer.probabilities(warm, model.config.sample_rate)

    def on_clip(path):
        try:
            result = analyzer.classify(path)
        except InputProblem as e:
            raise gr.Error(str(e), duration=None, print_exception=False) from None
        info = (f"**{result['label']}** — {result['duration']:.2f} s at **{result['sample_rate']} Hz** "
                f"(classified at that rate), {result['latency_ms']:.0f} ms on {analyzer.device}")
        return (result["confidences"], info, waveform_figure(result["audio"], result["sample_rate"]),
                result["timeline"])

    def predict(path):
        try:
            result = analyzer.classify(path)
        except InputProblem as e:
            raise gr.Error(str(e), print_exception=False) from None
        return result["confidences"]

    def on_stream(chunk, state):
        if chunk is None:
            return gr.skip(), gr.skip(), state, gr.skip()
        rate, data = chunk
        try:
            if state is None or state["rate"] != rate:
                state = {"rate": rate, "detections": [], "lag": ChunkLag(0.25),
                         "spotter": KeywordSpotter(analyzer.model, rate, StreamConfig(hop_seconds=0.25),
                                                   device=str(analyzer.device))}
            results = state["spotter"].push(data)
        except ValueError as e:
            raise gr.Error(f"Cannot use the microphone stream: {e}") from None
        warning = state["lag"].update(len(data) / rate, [r.latency_ms for r in results])  # say so when behind
        status = f"⚠️ **{warning}**" if warning else ""
        if not results:
            return gr.skip(), gr.skip(), state, status
        for r in results:
            if r.detection is not None:
                state["detections"].insert(0, f"{r.detection.time:6.2f} s  {r.detection.label}  "
                                              f"({r.detection.score:.2f})")
        latest = results[-1]
        top = dict(latest.top(analyzer.labels, analyzer.top_k))
        return top, "\n".join(state["detections"][:20]) or "(none yet)", state, status

    examples = sorted(str(p) for p in EXAMPLES.glob("*.wav"))
    cfg = model.config
    with gr.Blocks(title="MRConv keyword spotting", analytics_enabled=False) as demo:
        gr.Markdown(f"# MRConv keyword spotting\nModel `{Path(model_dir).name}`: {len(cfg.labels)} classes, "
                    f"trained at {cfg.sample_rate} Hz, running on **{analyzer.device}**. Audio at any rate from "
                    f"{analyzer.rate_range[0]:g} to {analyzer.rate_range[1]:g} Hz is classified at its own rate.")
        with gr.Tab("Live microphone"):
            mic = gr.Audio(sources=["microphone"], streaming=True, label="Microphone", elem_id="live-mic")
            with gr.Row():
                live_label = gr.Label(num_top_classes=analyzer.top_k, label="Now hearing", elem_id="live-label")
                live_detections = gr.Textbox(label="Detections (time in stream)", lines=10, elem_id="live-detections")
            live_status = gr.Markdown(elem_id="live-status")  # a warning when processing falls behind
            session = gr.State(None)
            mic.stream(on_stream, inputs=[mic, session], outputs=[live_label, live_detections, session, live_status],
                       stream_every=0.25, time_limit=600, concurrency_limit=4, api_visibility="private")
        with gr.Tab("Clip"):
            with gr.Row():
                with gr.Column():
                    clip = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Record or upload",
                                    elem_id="clip-audio")
                    classify_button = gr.Button("Classify", variant="primary", elem_id="classify")
                    gr.Examples(examples, inputs=clip, label="Speech Commands examples (CC BY 4.0, Warden 2018)")
                with gr.Column():
                    clip_label = gr.Label(num_top_classes=analyzer.top_k, label="Top classes", elem_id="clip-label")
                    clip_info = gr.Markdown(elem_id="clip-info")
            clip_plot = gr.Plot(label="Waveform and spectrogram")
            timeline = gr.Dataframe(headers=["time (s)", "label", "score"], label="Detections along the clip",
                                    elem_id="timeline")
            classify_button.click(on_clip, inputs=clip, outputs=[clip_label, clip_info, clip_plot, timeline],
                                  api_visibility="private")
        with gr.Tab("Model"):
            gr.Markdown(
                f"- folder: `{model_dir}`\n- classes: {', '.join(f'`{c}`' for c in cfg.labels)}\n- trained at {cfg.sample_rate} Hz, "
                f"window {cfg.clip_seconds:g} s\n- {cfg.kernel} kernels, width {cfg.d_model}, depth {cfg.depth}, "
                f"l0 {cfg.l0}, {'bidirectional' if cfg.bidirectional else 'causal'}, merged for inference\n"
                f"- device: {analyzer.device}; one 1 s clip: {clip_latency:.1f} ms")
            gr.Plot(value=kernel_figure(analyzer.model), label="Merged kernels")
        # The API: audio file in, label and confidences out (gradio_client: api_name="/predict").
        api_in = gr.Audio(type="filepath", visible=False)
        api_out = gr.Label(visible=False)
        api_in.change(predict, inputs=api_in, outputs=api_out, api_name="predict")
    return demo


def launch(model, model_dir, host="127.0.0.1", port=7860, share=False, compute_device="auto", block=True):
    demo = build_demo(model, model_dir, compute_device)
    demo.queue(default_concurrency_limit=4)
    return demo.launch(server_name=host, server_port=port, share=share, max_file_size=f"{MAX_FILE_MB}mb",
                       prevent_thread_lock=not block, show_error=True, quiet=not block)
