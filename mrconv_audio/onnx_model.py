"""Run an exported model (`mrconv-audio export`) with onnxruntime and numpy alone: no torch.

    OnnxModel(path): x (batch, samples) float32 at any rate -> logits (batch, classes), numpy in and out

An exported file runs at the rate it was exported for (the front end's constants are that rate's). Audio at another
rate is resampled to it, window by window, by FFT (the spectrum cut or zero-extended: band-limited, no filter
design; the window's ends are treated as periodic, which a 1 s window with the word inside it does not notice).
To run at a device's own rate without resampling, export at that rate (`mrconv-audio export --rate 48000`).

The streaming engine (streaming.KeywordSpotter) takes an OnnxModel in place of a PyTorch model; it recognizes it by
`exported = True` and asks it for probabilities instead of calling torch.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

FORMAT = "mrconv-audio-onnx"
FORMAT_VERSION = 1
ONNX_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"


class OnnxModelError(ValueError):
    """An exported model file that is missing, unreadable or not one of ours."""


def resolve(path) -> Path:
    """A model file, or a folder holding model.onnx (default: the shipped model's folder)."""
    if path is None:
        from .paths import default_model_dir

        path = default_model_dir()
    path = Path(path)
    if path.is_dir():
        path = path / ONNX_NAME
        if not path.is_file():
            raise OnnxModelError(f"{path}: missing; export one with `mrconv-audio export --model {path.parent} "
                                 f"--rate 16000 --out {path}` (needs the full install, with torch)")
    elif not path.is_file():
        raise OnnxModelError(f"{path}: no such file")
    return path


class OnnxModel:
    """An exported model in an onnxruntime session on `threads` CPU threads (one: a 1 s window is too small to share
    out, and a second thread lent to another program stalls every hop)."""

    exported = True  # streaming.KeywordSpotter: numpy in, numpy out
    reparameterized = True

    def __init__(self, path=None, threads: int = 1):
        try:
            import onnxruntime as ort
        except ImportError:
            raise OnnxModelError("running an exported model needs onnxruntime: pip install onnxruntime "
                                 "(README, \"Light runtime\")") from None
        self.path = resolve(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable files
            raise OnnxModelError(f"{self.path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != FORMAT:
            raise OnnxModelError(f"{self.path}: metadata field 'format' is {meta.get('format')!r}, expected "
                                 f"{FORMAT!r} (a file written by `mrconv-audio export`)")
        try:
            self.sample_rate = int(meta["sample_rate"])
            self.window_samples = int(meta["window_samples"])
            self.labels = list(json.loads(meta["labels"]))
            self.rate_low, self.rate_high = (float(v) for v in json.loads(meta["rate_range"]))
        except (KeyError, ValueError, TypeError) as e:
            raise OnnxModelError(f"{self.path}: bad or missing metadata ({type(e).__name__}: {e})") from None
        self.metadata = dict(meta)
        (inp,), (out,) = self.session.get_inputs(), self.session.get_outputs()
        if inp.shape[1:] != [self.window_samples] or out.shape[1:] != [len(self.labels)]:
            raise OnnxModelError(f"{self.path}: input {inp.shape} / output {out.shape} do not match the metadata's "
                                 f"window ({self.window_samples} samples) and {len(self.labels)} labels")
        self.input_name = inp.name
        self.clip_seconds = self.window_samples / self.sample_rate
        self.device = f"onnxruntime CPU ({self.path.name})"

    # The attributes streaming.KeywordSpotter reads of a model.
    def rate_range(self) -> tuple[float, float]:
        return self.rate_low, self.rate_high

    def max_samples(self, sample_rate: float | None = None) -> int:
        return math.ceil((sample_rate or self.sample_rate) * self.clip_seconds - 1e-9)

    def logits(self, x: np.ndarray, sample_rate: float | None = None) -> np.ndarray:
        """x: (batch, samples) at `sample_rate` (default: the export rate), at most one window; shorter input is
        zero-padded at the end -> logits (batch, classes)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"expected audio of shape (batch, samples), got {x.shape}")
        rate = sample_rate or self.sample_rate
        if not self.rate_low <= rate <= self.rate_high:
            raise ValueError(f"a {rate:g} Hz input is out of range for this model: expected {self.rate_low:g} to "
                             f"{self.rate_high:g} Hz")
        if x.shape[1] > self.max_samples(rate):
            raise ValueError(f"input of {x.shape[1]} samples is longer than the model's {self.clip_seconds:g} s "
                             f"window ({self.max_samples(rate)} samples at {rate:g} Hz)")
        if rate != self.sample_rate:
            x = fft_resample(x, self.window_samples * x.shape[1] / self.max_samples(rate))
        x = x[:, : self.window_samples]
        x = np.pad(x, ((0, 0), (0, self.window_samples - x.shape[1])))
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def probabilities(self, x: np.ndarray, sample_rate: float | None = None) -> np.ndarray:
        z = self.logits(x, sample_rate).astype(np.float64)
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)

    # streaming.KeywordSpotter moves and switches a PyTorch model; an onnxruntime session is already there.
    def to(self, device):
        return self

    def eval(self):
        return self


def fft_resample(x: np.ndarray, length: float) -> np.ndarray:
    """(batch, n) -> (batch, round(length)) with the same spectrum up to the lower rate's Nyquist frequency."""
    n, m = x.shape[-1], max(1, round(length))
    if m == n:
        return x
    spectrum = np.fft.rfft(x.astype(np.float64), axis=-1)
    keep = min(spectrum.shape[-1], m // 2 + 1)
    out = np.zeros(x.shape[:-1] + (m // 2 + 1,), np.complex128)
    out[..., :keep] = spectrum[..., :keep]
    if m % 2 == 0 and keep == m // 2 + 1 and m < n:  # the new Nyquist bin of a real signal holds both halves
        out[..., -1] = out[..., -1].real
    return (np.fft.irfft(out, n=m, axis=-1) * (m / n)).astype(np.float32)
