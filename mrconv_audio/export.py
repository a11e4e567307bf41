"""ONNX export of a merged log-mel MRConv model at one input rate, and its int8 variant.

    x: (batch, samples) float32 at `rate`, samples = the model's 1 s window  ->  logits (batch, classes)

The exported graph computes what MRConvClassifier.forward computes, in operators every ONNX runtime has:
- front end: frames cut by a strided Conv1d whose filters are the Hann-windowed DFT basis (the bins the mel filters
  use, not all n_fft // 2 + 1), squared, summed (power), a MatMul with the mel filterbank, Log. Where a rate's hop
  is not a whole number of samples (22.05 kHz, 11.025 kHz) the frames are gathered by a constant index instead;
- each MRConv layer: its merged kernel (the branches and D summed, the bias apart) as a constant, applied over the
  100 frames as a per-channel Toeplitz MatMul ("matmul", the default: fastest in onnxruntime, see
  benchmarks/onnx_speed.py), a depthwise Conv ("conv"), or as the PyTorch layer does it, rfft -> product with the
  spectrum -> irfft ("fft": onnxruntime's DFT; measured, not the default);
- BatchNorms folded into a scale and a shift; pointwise layers as MatMuls on (batch, frames, channels), so that
  onnxruntime's dynamic quantization can turn them into int8.
No FFT by default: with torch 2.11, onnxscript 0.7.2 and onnxruntime 1.32 the FFT form exports and runs, but
onnxruntime's CPU DFT on the layer's 200-point grid makes the model 4x slower than PyTorch, while the Toeplitz MatMul
makes it 1.5x faster (benchmarks/onnx_speed.py; README, "Deployment"). The batch dimension is dynamic, the time
dimension fixed at the window (the streaming engine always classifies a full window).

The file carries its metadata (format, rate, window, labels, the rate range, a SHA-256 of the weights it came
from), read by the torch-free runtime (onnx_model.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .atomic import atomic_write
from .frontend import frame_layout, mel_filterbank
from .model import MRConvClassifier
from .onnx_model import FORMAT, FORMAT_VERSION

CONV_MODES = ("matmul", "conv", "fft")


def _bn_affine(norm: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as y = x * scale + shift."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return scale, norm.bias - norm.running_mean * scale


class FrontEnd(nn.Module):
    """LogMel at one rate with a fixed input length: x (B, samples) -> (B, frames, n_mels)."""

    def __init__(self, frontend, rate: int, samples: int):
        super().__init__()
        window = frontend.window_length(rate)
        n_fft = round(2 * frontend.window_seconds * rate)
        bank = mel_filterbank(frontend.n_mels, frontend.f_min, frontend.f_max, float(rate), n_fft).double()
        used = torch.nonzero(bank.sum(0) > 0).flatten()
        lo, hi = int(used.min()), int(used.max()) + 1  # bins outside the filters never reach the output
        n = torch.arange(window, dtype=torch.float64)
        k = torch.arange(lo, hi, dtype=torch.float64)
        hann = torch.sin(math.pi * n / window) ** 2  # torch.hann_window(periodic=True)
        scale = 1 / math.sqrt(n_fft * float(hann.square().sum()))  # LogMel's power normalization, split over re, im
        angle = 2 * math.pi * k[:, None] * n[None, :] / n_fft
        basis = torch.cat([torch.cos(angle), torch.sin(angle)]) * hann * scale  # (2 * bins, window)
        index = frame_layout(samples, float(rate), float(frontend.frame_rate), window)  # (frames, window)
        hop = rate / frontend.frame_rate
        self.bins, self.frames, self.floor = hi - lo, index.shape[0], frontend.floor
        self.pad = (window // 2, window - window // 2)
        self.hop = int(hop) if hop == int(hop) else None
        self.register_buffer("basis", basis.float()[:, None, :])  # Conv1d weight (2 * bins, 1, window)
        self.register_buffer("bank", bank[:, lo:hi].T.float().contiguous())  # (bins, n_mels)
        if self.hop is None:  # frame centres rounded to samples: not a stride
            self.register_buffer("index", index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, self.pad)
        if self.hop is not None:
            spec = F.conv1d(padded[:, None, :], self.basis, stride=self.hop)[..., : self.frames].transpose(1, 2)
        else:
            spec = torch.matmul(padded[:, self.index], self.basis[:, 0, :].T)  # (B, frames, 2 * bins)
        re, im = spec[..., : self.bins], spec[..., self.bins :]
        return torch.log(torch.matmul(re * re + im * im, self.bank) + self.floor)  # (B, frames, n_mels)


class DepthwiseConv(nn.Module):
    """A merged MRConv layer over `length` frames: its kernel (D included) and bias as constants.
    x: (B, T, H) -> (B, T, H)."""

    def __init__(self, layer, length: int, mode: str):
        super().__init__()
        if not layer.merged:
            raise ValueError("export needs a reparameterized (merged) model")
        k = layer.merged_kernel(min(layer.max_len, length))  # (directions, H, taps)
        taps = k.shape[-1]
        # Cross-correlation weights over offsets -(length-1) .. length-1: y[t] = sum_o w[o] u[t + o].
        w = k.new_zeros(layer.channels, 2 * length - 1)
        centre = length - 1
        w[:, centre - taps + 1 : centre + 1] = k[0].flip(-1)  # causal tap s at offset -s
        if k.shape[0] == 2:
            reach = min(taps, length - 1)
            w[:, centre + 1 : centre + 1 + reach] = k[1, :, :reach]  # anti-causal tap s at offset s + 1
        w[:, centre] += layer.D
        self.mode, self.length = mode, length
        self.register_buffer("weight", w[:, None, :].contiguous())  # (H, 1, 2T - 1)
        if mode == "fft":  # what the PyTorch layer computes: rfft, product with its spectrum (D included), irfft
            self.n, spectrum = layer.frequency_response(length)
            self.register_buffer("spectrum", torch.stack([spectrum.real, spectrum.imag]))  # (2, H, n // 2 + 1)
        self.register_buffer("bias", layer.bias.detach().clone())

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        if self.mode == "matmul":  # M[h, t', t] = w[h, t' - t]: y[h, b, :] = u[h, b, :] @ M[h]. M is gathered in
            # the graph (onnxruntime folds it when the session starts): stored, it would make the file 10x larger.
            y = torch.matmul(x.permute(2, 0, 1), self.weight[:, 0, offsets]).permute(1, 2, 0)
        elif self.mode == "fft":
            u_f = torch.fft.rfft(x.transpose(1, 2), n=self.n)
            y = torch.fft.irfft(u_f * torch.complex(self.spectrum[0], self.spectrum[1]), n=self.n)
            y = y[..., : self.length].transpose(1, 2)
        else:
            u = F.pad(x.transpose(1, 2), (self.length - 1, self.length - 1))
            y = F.conv1d(u, self.weight, groups=self.weight.shape[0]).transpose(1, 2)
        return y + self.bias


class Block(nn.Module):
    """MRConvBlock (prenorm, BatchNorm, eval): x (B, T, H) -> (B, T, H)."""

    def __init__(self, block, length: int, mode: str):
        super().__init__()
        if not (block.prenorm and isinstance(block.norm, nn.BatchNorm1d)):
            raise ValueError("export supports pre-norm BatchNorm blocks (the logmel preset)")
        scale, shift = _bn_affine(block.norm)
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())
        self.conv = DepthwiseConv(block.conv, length, mode)
        self.mix = nn.Linear(block.mix.in_channels, block.mix.out_channels)
        self.mix.weight.data.copy_(block.mix.weight[..., 0])
        self.mix.bias.data.copy_(block.mix.bias)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        z = F.gelu(self.conv(x * self.scale + self.shift, offsets))
        return x + F.glu(self.mix(z), dim=-1)


class ExportGraph(nn.Module):
    """The whole classifier at one rate, in the operators above: x (B, samples) -> logits (B, classes)."""

    def __init__(self, model: MRConvClassifier, rate: int, mode: str = "matmul"):
        super().__init__()
        cfg = model.config
        if cfg.frontend != "logmel":
            raise ValueError(f"export supports log-mel models (frontend 'logmel'), not {cfg.frontend!r}")
        if mode not in CONV_MODES:
            raise ValueError(f"conv mode must be one of {CONV_MODES}, got {mode!r}")
        low, high = model.rate_range()
        if not low <= rate <= high:
            raise ValueError(f"rate {rate} Hz is out of this model's range: expected {low:g} to {high:g} Hz")
        if not model.reparameterized:
            model.reparameterize()
        self.samples = model.max_samples(rate)
        self.front = FrontEnd(model.frontend, rate, self.samples)
        scale, shift = _bn_affine(model.input_norm)
        # The input BatchNorm and the encoder are both affine: fold them into one Linear.
        w = model.encoder.weight[..., 0]  # (H, n_mels)
        self.encoder = nn.Linear(w.shape[1], w.shape[0])
        self.encoder.weight.data.copy_(w * scale)
        self.encoder.bias.data.copy_(model.encoder.bias + w @ shift)
        self.blocks = nn.ModuleList(Block(b, self.front.frames, mode) for b in model.blocks)
        frames = torch.arange(self.front.frames)
        self.register_buffer("offsets", frames[:, None] - frames[None, :] + self.front.frames - 1)  # (T, T) -> w
        self.decoder = nn.Linear(model.decoder.in_features, model.decoder.out_features)
        self.decoder.load_state_dict(model.decoder.state_dict())
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.front(x))
        for block in self.blocks:
            h = block(h, self.offsets)
        return self.decoder(h.mean(dim=1))


@contextlib.contextmanager
def quiet_logs():
    """The exporter's and the quantizer's advice (torchvision absent, "consider pre-processing") is not the user's."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.ERROR)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(before)


def weights_digest(model_dir) -> str:
    """SHA-256 of the model folder's weights and config: an exported file records which model it came from."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        digest.update((Path(model_dir) / name).read_bytes())
    return digest.hexdigest()


def metadata(model: MRConvClassifier, rate: int, samples: int, source: str, mode: str) -> dict[str, str]:
    low, high = model.rate_range()
    return {"format": FORMAT, "format_version": str(FORMAT_VERSION), "sample_rate": str(rate),
            "window_samples": str(samples), "labels": json.dumps(model.labels), "rate_range": json.dumps([low, high]),
            "source_sha256": source, "conv": mode, "torch": torch.__version__}


def export_onnx(model: MRConvClassifier, rate: int, out, source_sha256: str = "", mode: str = "matmul") -> Path:
    """Write `model` at `rate` to `out` (ONNX, dynamic batch) with torch.onnx.export(dynamo=True)."""
    import onnx

    graph = ExportGraph(model, rate, mode)
    example = torch.zeros(2, graph.samples)
    with torch.no_grad(), quiet_logs():
        program = torch.onnx.export(graph, (example,), dynamo=True, input_names=["audio"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False)
    program.optimize()
    proto = program.model_proto
    meta = metadata(model, rate, graph.samples, source_sha256, mode)
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: onnx.save(proto, tmp))
    return out


def quantize_int8(src, out) -> Path:
    """onnxruntime dynamic quantization of the pointwise layers (encoder, every block's mix, decoder): int8 weights,
    activations quantized per call. The front end (DFT basis, mel filters) and the MRConv kernels stay float: the
    log of a quantized power spectrum and a kernel that sums 100 frames lose the most."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(src))
    constants = {init.name: init for init in proto.graph.initializer}
    pointwise = [node.name for node in proto.graph.node if node.op_type in ("MatMul", "Gemm")
                 and len(node.input) > 1 and node.input[1] in constants and len(constants[node.input[1]].dims) == 2
                 and not _front_end_constant(constants[node.input[1]])]
    excluded = [node.name for node in proto.graph.node if node.name not in pointwise]
    out = Path(out)
    with quiet_logs():
        atomic_write(out, lambda tmp: quantize_dynamic(str(src), tmp, weight_type=QuantType.QInt8,
                                                       nodes_to_exclude=excluded,
                                                       op_types_to_quantize=["MatMul", "Gemm"]))
    quantized = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props} | {"quantization": f"int8 dynamic: {len(pointwise)} "
                                                                              "pointwise layers"}
    del quantized.metadata_props[:]
    for key, value in meta.items():
        quantized.metadata_props.add(key=key, value=value)
    atomic_write(out, lambda tmp: onnx.save(quantized, tmp))
    return out


def _front_end_constant(init) -> bool:
    """The mel filterbank (bins, n_mels) and a gathered DFT basis are the front end's; the pointwise weights are
    (in, out) with in, out among the model's widths and class count. Decided by name where the exporter kept it."""
    return "bank" in init.name or "basis" in init.name


def max_relative_error(reference, other) -> float:
    """max |other - reference| / max |reference|, per clip, worst clip: the parity measure of tests and `export`."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    return float((np.abs(other - reference).max(-1) / np.abs(reference).max(-1)).max())


def check_windows(samples: int, count: int = 4, seed: int = 0) -> np.ndarray:
    """Seeded test windows for `export`'s own parity check: noise at four levels, (count, samples) float32."""
    rng = np.random.default_rng(seed)
    levels = np.logspace(-3, -0.5, count)[:, None]
    return (levels * rng.standard_normal((count, samples))).astype(np.float32)


def export_model(model_dir, rate: int, out, int8=None, mode: str = "matmul", tolerance: float = 1e-4) -> dict:
    """`mrconv-audio export`: the model in `model_dir`, merged, exported at `rate` to `out` (and quantized to
    `int8`), checked against PyTorch with onnxruntime. Raises when the float file differs by more than `tolerance`."""
    from .onnx_model import OnnxModel

    model = MRConvClassifier.from_pretrained(model_dir).reparameterize()
    out = export_onnx(model, rate, out, weights_digest(model_dir), mode)
    x = check_windows(model.max_samples(rate))
    with torch.no_grad():
        reference = model(torch.from_numpy(x), sample_rate=rate).numpy()
    report = {"model": str(model_dir), "rate": rate, "conv": mode, "files": {}}
    for path in [out] + ([quantize_int8(out, int8)] if int8 else []):
        error = max_relative_error(reference, OnnxModel(path).logits(x))
        report["files"][str(path)] = {"bytes": Path(path).stat().st_size, "max_relative_error": error}
    error = report["files"][str(out)]["max_relative_error"]
    if not error <= tolerance:
        raise ValueError(f"{out}: onnxruntime's logits differ from PyTorch's by {error:.2e} (relative), more than "
                         f"{tolerance:g}")
    return report
