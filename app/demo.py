"""`mrconv-audio demo`: a Gradio web demo over mrconv_audio.streaming.

Tabs: a live microphone (streaming, label and top-k updating as you speak, detections listed, input level), a clip
(record, upload or pick an example at any rate; classified at once: top-k, waveform, spectrogram, and for clips longer
than the window the words detected along it), and the model (classes, rate, device, latency, merged kernels per
layer). The `predict` API takes an audio file (and whether to find the words along it) and returns {"label",
"confidences", "detections", "scanned_seconds"} (see predict).
Bad input shows its message in the page and clears the last result; the server keeps serving.

No client holds the others back for long: every model call takes its turn (app/limits.py), a timeline one hop per
turn within a budget of model time, clients are limited in requests at once and a minute, the header is checked
before a clip is decoded, and uploads are deleted after UPLOAD_TTL_S.
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

from app.limits import ClientLimits, FairTurns, TooManyRequests, trim_memory
from mrconv_audio.data.audio import AudioError, fit_length, load_audio
from mrconv_audio.conditioning import fit_full_scale, full_scale_notes, remove_dc
from mrconv_audio.streaming import ChunkLag, KeywordSpotter, NonFiniteScores, StreamConfig, rms_dbfs

EXAMPLES = Path(__file__).resolve().parent / "examples"
MAX_CLIP_SECONDS = 60.0
MAX_FILE_MB = 20
MAX_CHANNELS = 2  # with the length and rate limits: at most 60 s x 96 kHz x 2 channels decoded (46 MB) per request
TIMELINE_HOP_S = 0.1  # one hop of the timeline is computed per turn of the model
TIMELINE_BUDGET_S = 10.0  # model time one request may spend on its timeline; past it the timeline ends early
CLIP_CONCURRENCY = 16  # clip and API requests running at once (they share the model in turns: see app/limits.py)
MAX_LIVE_CHUNK_S = 5.0  # audio in one live-microphone event (a browser sends 0.25 s)
QUEUE_SIZE = 200  # requests waiting in Gradio's queue; more are refused ("queue is full")
UPLOAD_CHECK_S, UPLOAD_TTL_S = 60, 600  # every minute, delete uploads older than ten minutes
SILENCE_DBFS = -60.0
NO_KEYWORD = "no keyword detected"
TIMELINE_HEADERS = ["time (s)", "word", "score"]


def literal(text: str) -> str:
    """Text shown as is inside Markdown (`_silence_` must not turn into an italic "silence")."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~])", r"\\\1", str(text))


def example_word(path) -> str:
    """The word of a Speech Commands file name: down_3b4f8f24_nohash_0.wav -> down."""
    return Path(path).name.split("_")[0]


def level_meter(dbfs: float, gated: bool) -> str:
    """Input level as a bar from -60 to 0 dBFS, and whether it is loud enough to be classified."""
    filled = int(round(np.clip((dbfs + 60) / 60, 0, 1) * 20))
    note = "too quiet: speak up or move closer" if gated else "listening"
    return f"input level {dbfs:6.1f} dBFS  {'█' * filled}{'·' * (20 - filled)}  ({note})"


class InputProblem(ValueError):
    """Input the demo cannot classify; the message is shown to the user."""


class ClipAnalyzer:
    """Everything the demo computes, without Gradio: testable on its own."""

    def __init__(self, model, compute_device: str = "auto", top_k: int = 5, budget_s: float = TIMELINE_BUDGET_S):
        from mrconv_audio.device import pick_device

        self.turns = FairTurns(on_idle=trim_memory)  # every model call takes its turn, requests share round-robin
        self.budget_s = budget_s

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
        self.check_header(path)
        try:
            x, rate = load_audio(path, max_seconds=MAX_CLIP_SECONDS)
        except AudioError as e:
            reason = str(e).split(": ", 1)[-1]  # the message without the server's temporary path
            raise InputProblem(f"Cannot use this file: {re.sub(r'Error opening .*?: ', '', reason)}") from None
        return self.check(x, rate)

    def check_header(self, path) -> None:
        """Rate and channels from the header, before decoding: a 60 s FLAC at 655 kHz with 8 channels is a few MB
        on disk and over a GB decoded."""
        import soundfile as sf

        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError, OSError):
            return  # load_audio says what is wrong with it
        low, high = self.rate_range
        if not low <= info.samplerate <= high:
            raise InputProblem(f"Sample rate {info.samplerate} Hz is outside what this model runs at "
                               f"({low:g} to {high:g} Hz).")
        if info.channels > MAX_CHANNELS:
            raise InputProblem(f"The clip has {info.channels} channels; the demo takes mono or stereo.")

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
        with self.turns.turn():
            start = time.perf_counter()
            probs = torch.softmax(self.model(x, sample_rate=rate).float(), -1)[0].cpu().numpy()
            latency = (time.perf_counter() - start) * 1e3
        if not np.isfinite(probs).all():  # never a label read from NaN
            raise InputProblem("The model gave non-finite scores (NaN or infinity) for this clip: its weights are not "
                               "usable.")
        return {label: float(p) for label, p in zip(self.labels, probs)}, latency

    def classify(self, path, timeline: bool = True) -> dict:
        """A clip: top-k of its loudest window and, when it is longer than the window and `timeline` is asked for,
        the keywords detected along it (the streaming engine, hop 0.1 s). The label is the top class for a short clip
        (or a long one without its timeline) and, for a long one, the detected words in order (one window's top class
        would name a word the clip may not contain). `scanned` is how far the timeline got: the whole clip, or less
        when the request's model time (`budget_s`) ran out."""
        with self.turns.request():
            x, rate = self.read(path)
            x, gain = fit_full_scale(x)  # mis-scaled float audio: scaled back (conditioning.py), and said so
            window = self.model.max_samples(rate)
            centred = remove_dc(x, rate)  # as the streaming engine does for the timeline
            start = loudest_window_start(centred, window)
            probs, latency = self.probabilities(centred[start : start + window], rate)
            top = dict(sorted(probs.items(), key=lambda kv: -kv[1])[: self.top_k])
            label, events, scanned = max(probs, key=probs.get), [], len(x) / rate
            long = len(x) > window
            if long and timeline:
                events, scanned = self.timeline(x, rate)
                label = ", ".join(word for _, word, _ in events) or NO_KEYWORD
        return {"label": label, "confidences": top, "sample_rate": rate, "duration": len(x) / rate,
                "latency_ms": latency, "long": long, "timeline": events, "audio": x, "scanned": scanned,
                "notes": full_scale_notes(gain)}

    def timeline(self, x: np.ndarray, rate: int) -> tuple[list, float]:
        """[[time, word, score]] along the clip and the seconds of it scanned. Computed a hop at a time, each in
        its own turn, so other requests get the model in between; stops when the budget of model time is spent."""
        spotter = KeywordSpotter(self.model, rate, StreamConfig(hop_seconds=TIMELINE_HOP_S), device=str(self.device))
        padded = np.concatenate([x, np.zeros(spotter.window, np.float32)])  # the last word leaves through silence
        step, spent, results, done = spotter.hop, 0.0, [], 0
        while done < len(padded) and spent < self.budget_s:
            with self.turns.turn():
                start = time.perf_counter()
                try:
                    results += spotter.push(padded[done : done + step])
                except NonFiniteScores as e:
                    raise InputProblem(str(e)) from None
                spent += time.perf_counter() - start
            done += step
        events = [[round(r.detection.time, 2), r.detection.label, round(r.detection.score, 3)]
                  for r in results if r.detection is not None]
        return events, min(done, len(x)) / rate

    def live(self, spotter: KeywordSpotter, data: np.ndarray) -> list:
        """One chunk of a live stream through its spotter, a hop per turn of the model (a live stream shares it with
        clips). A browser sends 0.25 s a chunk; a crafted client could send a minute in one: refused."""
        if len(data) > MAX_LIVE_CHUNK_S * spotter.sample_rate:
            raise InputProblem(f"a chunk of {len(data) / spotter.sample_rate:.1f} s; at most {MAX_LIVE_CHUNK_S:g} s "
                               "at a time")
        results = []
        for i in range(0, len(data), spotter.hop):
            with self.turns.turn():
                results += spotter.push(data[i : i + spotter.hop])
        return results


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
        set_lag_axis(ax, k.shape[0] == 2, taps / rate * 1000)
        ax.set_ylabel(f"layer {i + 1}")
    axes[-1, 0].set_xlabel("lag (ms, symmetric log scale: linear within ±10 ms)")
    fig.suptitle("merged kernels (4 channels per layer)")
    fig.tight_layout()
    return fig


def set_lag_axis(ax, two_sided: bool, longest_ms: float) -> None:
    """Symmetric log lag axis with ticks at 0 and powers of ten (ms) only, spaced at least a decade apart: matplotlib's
    own symlog ticks crowd together around zero."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("symlog", linthresh=10, linscale=1)
    decades = [10.0**e for e in range(1, 6) if 10.0**e <= longest_ms * 1.5]
    ticks = [0.0] + decades + ([-d for d in decades] if two_sided else [])
    ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())


def client_of(request) -> tuple[str, str]:
    """(address, session) of a Gradio request; the session is one browser tab or one gradio_client.Client."""
    address = getattr(getattr(request, "client", None), "host", None) or "unknown"
    return address, getattr(request, "session_hash", None) or address


def build_demo(model, model_dir: str, compute_device: str = "auto", limits: ClientLimits | None = None,
               budget_s: float = TIMELINE_BUDGET_S):
    import gradio as gr

    analyzer = ClipAnalyzer(model, compute_device, budget_s=budget_s)
    limits = limits or ClientLimits()
    rng = np.random.default_rng(0)
    for rate in sorted({model.config.sample_rate, 16000, 44100, 48000}):  # build the kernel caches of common rates
        analyzer.probabilities(rng.standard_normal(model.max_samples(rate)).astype(np.float32) * 0.1, rate)
    warm = rng.standard_normal(model.max_samples()).astype(np.float32) * 0.1
    _, clip_latency = analyzer.probabilities(warm, model.config.sample_rate)

    empty_clip = (None, "", None, None)  # label, info, plot, timeline: nothing shown

    def on_clip(path, request: gr.Request, explain_missing=True):
        """The Clip tab's outputs; a problem clears them and shows its message (a toast and the info line)."""
        if path is None and not explain_missing:  # the audio was cleared: clear the result with it
            return empty_clip
        try:
            with limits.admit(*client_of(request)):
                result = analyzer.classify(path)
        except (InputProblem, TooManyRequests) as e:
            gr.Warning(str(e), duration=None)
            return None, f"**Cannot classify this clip:** {literal(e)}", None, None
        n = len(result["timeline"])
        heard = f"{n} word{'' if n == 1 else 's'} detected along the clip; " if result["long"] else ""
        if result["long"] and result["scanned"] < result["duration"]:
            heard += f"only the first {result['scanned']:.1f} s scanned (the server is busy); "
        info = (f"**{literal(result['label'])}** — {heard}{result['duration']:.2f} s at "
                f"**{result['sample_rate']} Hz** "
                f"(classified at that rate), {result['latency_ms']:.0f} ms per window on {analyzer.device}"
                + "".join(f". Note: {literal(note)}" for note in result["notes"]))
        # A long clip's headline is its detected words (their scores are in the timeline), a short one's the top-k.
        label = result["label"] if result["long"] else result["confidences"]
        return label, info, waveform_figure(result["audio"], result["sample_rate"]), result["timeline"] or None

    def predict(path, detections, request: gr.Request):
        """API: an audio file and whether to find the words along it (default: no) in; out {"label": the top class
        of the loudest 1 s window, or with detections asked for and a clip longer than 1 s the words detected along
        it, in order ("no keyword detected" if none), "confidences": [{"label", "confidence"}] top 5 of the loudest
        1 s window, "detections": [{"time", "label", "score"}] along a clip longer than 1 s, "scanned_seconds": how
        much of the clip the detections cover (less than its length when the request's model time ran out), "notes":
        what was done to the audio (e.g. scaled down from beyond full scale)}."""
        try:
            with limits.admit(*client_of(request)):
                result = analyzer.classify(path, timeline=bool(detections))
        except (InputProblem, TooManyRequests) as e:
            raise gr.Error(str(e), print_exception=False) from None
        return {"label": result["label"],
                "confidences": [{"label": k, "confidence": v} for k, v in result["confidences"].items()],
                "detections": [{"time": t, "label": w, "score": p} for t, w, p in result["timeline"]],
                "scanned_seconds": round(result["scanned"], 3), "notes": result["notes"]}

    def on_clip_change(path, request: gr.Request):
        return on_clip(path, request, explain_missing=False)

    # Gradio hands its request (the client's address and session) to a parameter annotated gr.Request; with
    # `from __future__ import annotations` the annotation is a string it cannot resolve here (gr is a local name).
    for fn in (on_clip, on_clip_change, predict):
        fn.__annotations__["request"] = gr.Request

    def on_stream(chunk, state):
        if chunk is None:
            return gr.skip(), gr.skip(), state, gr.skip(), gr.skip()
        rate, data = chunk
        try:
            if state is None or state["rate"] != rate:
                state = {"rate": rate, "detections": [], "lag": ChunkLag(0.25),
                         "spotter": KeywordSpotter(analyzer.model, rate, StreamConfig(hop_seconds=0.25),
                                                   device=str(analyzer.device))}
            results = analyzer.live(state["spotter"], data)
        except ValueError as e:
            raise gr.Error(f"Cannot use the microphone stream: {e}") from None
        warning = state["lag"].update(len(data) / rate, [r.latency_ms for r in results])  # say so when behind
        status = f"⚠️ **{warning}**" if warning else ""
        if not results:
            return gr.skip(), gr.skip(), state, gr.skip(), status
        for r in results:
            if r.detection is not None:
                state["detections"].insert(0, f"{r.detection.time:6.2f} s  {r.detection.label}  "
                                              f"({r.detection.score:.2f})")
        latest = results[-1]
        top = dict(latest.top(analyzer.labels, analyzer.top_k))
        return (top, "\n".join(state["detections"][:20]) or "(none yet)", state,
                level_meter(latest.rms_dbfs, latest.gated), status)

    examples = sorted(str(p) for p in EXAMPLES.glob("*.wav"))
    cfg = model.config
    low, high = analyzer.rate_range
    keywords = [c for c in cfg.labels if not c.startswith("_")]
    with gr.Blocks(title="MRConv keyword spotting", analytics_enabled=False) as demo:
        gr.Markdown(f"# MRConv keyword spotting\nModel `{Path(model_dir).name}`: {len(cfg.labels)} classes, "
                    f"trained at {cfg.sample_rate / 1000:g} kHz, running on **{analyzer.device}**. Audio at any rate "
                    f"from {low / 1000:g} to {high / 1000:g} kHz is classified at its own rate.")
        with gr.Tab("Live microphone"):
            gr.Markdown(f"Press **Record**, allow the microphone, and say one of these words, one at a time: "
                        f"**{', '.join(keywords)}**. Detections appear on the right with their time in the stream; "
                        f"the bars show what the model hears now (`_silence_`: no speech, `_unknown_`: another word).",
                        elem_id="live-help")
            mic = gr.Audio(sources=["microphone"], streaming=True, label="Microphone", elem_id="live-mic")
            level = gr.Textbox(label="Input", value="input level: waiting for the microphone", interactive=False,
                               elem_id="live-level")
            with gr.Row():
                live_label = gr.Label(num_top_classes=analyzer.top_k, label="Now hearing", elem_id="live-label")
                live_detections = gr.Textbox(label="Detections (time in stream)", lines=10, elem_id="live-detections")
            live_status = gr.Markdown(elem_id="live-status")  # a warning when processing falls behind
            session = gr.State(None)
            # show_progress hidden: Gradio's running timer would cover the label's last percentage.
            mic.stream(on_stream, inputs=[mic, session],
                       outputs=[live_label, live_detections, session, level, live_status],
                       stream_every=0.25, time_limit=600, concurrency_limit=4, api_visibility="private",
                       show_progress="hidden")
        with gr.Tab("Clip"):
            with gr.Row():
                with gr.Column():
                    clip = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Record or upload",
                                    elem_id="clip-audio")
                    classify_button = gr.Button("Classify again", variant="secondary", elem_id="classify")
                    gr.Examples(examples, inputs=clip, example_labels=[example_word(e) for e in examples],
                                label="Speech Commands examples (CC BY 4.0, Warden 2018)")
                with gr.Column():
                    clip_label = gr.Label(num_top_classes=analyzer.top_k, label="Result", elem_id="clip-label")
                    clip_info = gr.Markdown(elem_id="clip-info")
            clip_plot = gr.Plot(label="Waveform and spectrogram")
            timeline = gr.Dataframe(headers=TIMELINE_HEADERS, label="Words detected along the clip (clips over 1 s)",
                                    elem_id="timeline")
            clip_outputs = [clip_label, clip_info, clip_plot, timeline]
            # Upload, recording and examples all change the audio: classify at once. The button classifies again.
            clip.change(on_clip_change, inputs=clip, outputs=clip_outputs, api_visibility="private",
                        concurrency_id="clip", concurrency_limit=CLIP_CONCURRENCY)
            classify_button.click(on_clip, inputs=clip, outputs=clip_outputs, api_visibility="private",
                                  concurrency_id="clip", concurrency_limit=CLIP_CONCURRENCY)
        with gr.Tab("Model"):
            gr.Markdown(
                f"- folder: `{model_dir}`\n- classes: {', '.join(f'`{c}`' for c in cfg.labels)}\n"
                f"- trained at {cfg.sample_rate / 1000:g} kHz, window {cfg.clip_seconds:g} s; runs at "
                f"{low / 1000:g} to {high / 1000:g} kHz\n- {cfg.kernel} kernels, width {cfg.d_model}, depth "
                f"{cfg.depth}, l0 {cfg.l0}, {'bidirectional' if cfg.bidirectional else 'causal'}, merged for "
                f"inference\n- device: {analyzer.device}; one 1 s clip: {clip_latency:.1f} ms")
            gr.Plot(value=kernel_figure(analyzer.model), label="Merged kernels")
        # The API (gradio_client: api_name="/predict"): an audio file in, a JSON object out (see predict). No format
        # conversion: the file is read as it came.
        api_in = gr.Audio(type="filepath", format=None, visible=False)
        api_detections = gr.Checkbox(value=False, visible=False, label="detections")
        api_out = gr.JSON(visible=False)
        api_in.change(predict, inputs=[api_in, api_detections], outputs=api_out, api_name="predict",
                      concurrency_id="clip", concurrency_limit=CLIP_CONCURRENCY)
    demo.analyzer = analyzer  # for tests: requests in flight
    return demo


def launch(model, model_dir, host="127.0.0.1", port=7860, share=False, compute_device="auto", block=True,
           quiet=None, limits: ClientLimits | None = None, upload_expiry=(UPLOAD_CHECK_S, UPLOAD_TTL_S),
           budget_s: float = TIMELINE_BUDGET_S):
    """Serve the demo. Gradio's own start-up lines speak of launch() arguments; these speak of the command's options.
    `upload_expiry`: (every how many seconds, older than how many seconds) uploaded files are deleted; `limits` and
    `budget_s` (model time per request): see app/limits.py and ClipAnalyzer."""
    demo = build_demo(model, model_dir, compute_device, limits, budget_s)
    demo.delete_cache = upload_expiry  # uploads (random bytes too) are deleted, not kept in the temp folder forever
    demo.queue(default_concurrency_limit=4, max_size=QUEUE_SIZE)
    try:
        demo.launch(server_name=host, server_port=port, share=share, max_file_size=f"{MAX_FILE_MB}mb",
                    prevent_thread_lock=True, show_error=True, quiet=True)
    except OSError as e:
        if "Cannot find empty port" not in str(e):
            raise
        raise OSError(f"port {port} on {host} is in use (another demo?): choose another with --port, "
                      f"e.g. --port {port + 1}") from None
    if not (quiet if quiet is not None else not block):
        print(f"* Demo running on http://{host}:{port} (Ctrl-C to stop)")
        print(f"* Public link: {demo.share_url}" if share else "* To get a public link, run it with --share")
    if block:
        demo.block_thread()
    return demo
