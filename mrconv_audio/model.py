"""MRConvConfig (a dataclass with named presets) and MRConvClassifier (paper figure 1, S4-style blocks)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .frontend import LogMel
from .kernels import KERNEL_PARAMETER_NAMES, KERNEL_TYPES
from .mrconv import NORMS, MRConv

# The 35 words of Speech Commands v0.02, in the order the paper's 35-way task uses (alphabetical).
SC35_LABELS = (
    "backward bed bird cat dog down eight five follow forward four go happy house learn left marvin nine no off "
    "on one right seven sheila six stop three tree two up visual wow yes zero"
).split()

BLOCK_NORMS = ("batchnorm", "layernorm")
FRONTENDS = ("waveform", "logmel")
# Rates a model runs at, relative to its training rate: 16 kHz -> 2 kHz .. 192 kHz.
MIN_RATE_RATIO, MAX_RATE_RATIO = 1 / 8, 12


@dataclass
class MRConvConfig:
    d_model: int = 128  # channels H
    depth: int = 6  # MRConv blocks
    kernel: str = "fourier"  # fourier | dilated | sparse | fourier_sparse
    l0: int = 32  # taps of the shortest sub-kernel ("kernel size" in the paper's table 5)
    n_modes: int = 16  # complex Fourier modes per sub-kernel, at most l0 // 2
    bidirectional: bool = True
    branch_norm: str = "batchnorm"  # batchnorm (paper) | rescale (eq. 9, merged while training)
    block_norm: str = "batchnorm"  # batchnorm | layernorm, over channels
    prenorm: bool = True
    dropout: float = 0.1
    tie_dropout: bool = True  # one mask per (example, channel) for the whole clip, as S4's DropoutNd(tie=True);
    #                           it draws 16,000x fewer random numbers, which is most of dropout's cost on a CPU
    sample_rate: int = 16000  # training rate in Hz
    clip_seconds: float = 1.0  # the model's window: longest input at sample_rate is sample_rate * clip_seconds
    labels: list[str] = field(default_factory=lambda: list(SC35_LABELS))
    # Input normalization (paper D.4): x -> (x - input_mean) / input_std * 0.2; statistics from the training split.
    input_mean: float = 0.0
    input_std: float = 0.2
    seed: int = 0  # sparse kernels' tap positions
    # Front end. waveform: the stack convolves raw samples (the paper). logmel: a fixed log-mel filterbank defined in
    # Hz and seconds (frontend.py) turns audio at any rate into frame_rate frames per second, and the stack convolves
    # frames; input_mean/input_std are then unused (a BatchNorm normalizes the bands).
    frontend: str = "waveform"
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float = 4000.0  # what an 8 kHz input still carries
    window_seconds: float = 0.025
    frame_rate: float = 100.0

    def __post_init__(self):
        self._check_types()
        checks = {
            "kernel": (self.kernel in KERNEL_TYPES, f"one of {KERNEL_TYPES}"),
            "branch_norm": (self.branch_norm in NORMS, f"one of {NORMS}"),
            "block_norm": (self.block_norm in BLOCK_NORMS, f"one of {BLOCK_NORMS}"),
            "frontend": (self.frontend in FRONTENDS, f"one of {FRONTENDS}"),
            "f_max": (self.frontend != "logmel" or 0 <= self.f_min < self.f_max <= self.sample_rate / 2,
                      "above f_min and at most sample_rate / 2"),
            # Upper bounds keep a corrupt or hostile config.json from allocating without limit (checkpoint.py then
            # checks every tensor's shape against the weights file before the model is built).
            "d_model": (1 <= self.d_model <= 4096, "between 1 and 4096"),
            "depth": (1 <= self.depth <= 64, "between 1 and 64"),
            "clip_seconds": (0.01 <= self.clip_seconds <= 10, "between 0.01 and 10 seconds"),
            "n_mels": (1 <= self.n_mels <= 256, "between 1 and 256"),
            "window_seconds": (0.001 <= self.window_seconds <= 0.5, "between 0.001 and 0.5 seconds"),
            "frame_rate": (1 <= self.frame_rate <= 1000, "between 1 and 1000 frames per second"),
            "seed": (self.seed >= 0, "a non-negative integer"),
            "n_modes": (1 <= self.n_modes <= self.l0 // 2, f"between 1 and l0 // 2 = {self.l0 // 2}"),
            "dropout": (0 <= self.dropout < 1, "in [0, 1)"),
            "sample_rate": (100 <= self.sample_rate <= 384_000, "between 100 and 384,000 Hz"),
            "labels": (2 <= len(self.labels) <= 10_000 and len(set(self.labels)) == len(self.labels)
                       and all(self.labels), "2 to 10,000 distinct, non-empty names"),
            "input_std": (self.input_std > 0, "positive"),
            "l0": (1 <= self.l0 <= self.max_len, f"between 1 and max_len = {self.max_len}"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"MRConvConfig.{name} must be {expected}, got {getattr(self, name)!r}")

    def _check_types(self) -> None:
        """Each field has its annotated type (JSON gives true for 1 and 48.5 for 48: both are refused)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok, expected = {
                "int": (number and isinstance(value, int), "an integer"),
                "float": (number and math.isfinite(value), "a finite number"),
                "bool": (isinstance(value, bool), "true or false"),
                "str": (isinstance(value, str), "a string"),
                "list[str]": (isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of strings"),
            }[f.type]
            if not ok:
                raise ValueError(f"MRConvConfig.{f.name} must be {expected}, got {value!r}")

    @property
    def max_len(self) -> int:
        """Length of the stack's input for one window: samples (waveform front end) or frames (logmel)."""
        return round((self.frame_rate if self.frontend == "logmel" else self.sample_rate) * self.clip_seconds)

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @classmethod
    def presets(cls) -> list[str]:
        return list(PRESETS)

    @classmethod
    def preset(cls, name: str, **overrides) -> "MRConvConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "MRConvConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown MRConvConfig fields: {unknown}")
        return cls(**values)


PRESETS: dict[str, dict] = {
    # Paper table 5, Speech Commands row: Fourier, depth 6, 128 features, kernel size 32, bidirectional, BN, prenorm.
    "sc35-paper": {},
    # Narrow, shallow, rescale-mode branches (one FFT convolution per layer while training): trains on 2 CPU cores.
    "small": dict(d_model=48, depth=3, branch_norm="rescale"),
    # Two rates: a log-mel front end at the audio's rate, then the paper's blocks (Fourier, bidirectional, BatchNorm
    # branches) over 100 frames per second. Sub-kernels of 8, 16, 32, 64 and 100 frames (80 ms to the whole second).
    # Width 80 and dropout 0.05: the shipped model's (width 64 with dropout 0.1 under-fitted, 93.4% validation vs 94.3%).
    "logmel": dict(frontend="logmel", d_model=80, depth=6, l0=8, n_modes=4, dropout=0.05),
}


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over channels of a (batch, channels, time) tensor."""

    def forward(self, x):
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class MRConvBlock(nn.Module):
    """[norm, MRConv, GELU, dropout, pointwise linear, GLU, dropout] + residual. x: (B, H, T) -> (B, H, T)."""

    def __init__(self, cfg: MRConvConfig, index: int = 0):
        super().__init__()
        H = cfg.d_model
        self.prenorm = cfg.prenorm
        self.norm = nn.BatchNorm1d(H) if cfg.block_norm == "batchnorm" else ChannelLayerNorm(H)
        self.conv = MRConv(
            H, cfg.max_len, cfg.l0, cfg.kernel, cfg.n_modes, cfg.bidirectional, cfg.branch_norm,
            seed=(cfg.seed, index),  # each layer draws its own sparse tap positions
        )
        self.dropout = nn.Dropout1d(cfg.dropout) if cfg.tie_dropout else nn.Dropout(cfg.dropout)
        self.mix = nn.Conv1d(H, 2 * H, 1)  # pointwise linear, then GLU halves the channels

    def forward(self, x: torch.Tensor, rate_ratio: float, mask: torch.Tensor | None) -> torch.Tensor:
        z = self.norm(x) if self.prenorm else x
        if mask is not None:  # padding must not leak into the global convolution
            z = z * mask
        z = self.dropout(F.gelu(self.conv(z, rate_ratio)))
        z = self.dropout(F.glu(self.mix(z), dim=1))
        x = x + z
        return x if self.prenorm else self.norm(x)


class MRConvClassifier(nn.Module):
    """Raw waveform classifier. x: (batch, time) at `sample_rate` Hz -> logits (batch, classes)."""

    def __init__(self, cfg: MRConvConfig):
        super().__init__()
        self.config = cfg
        if cfg.frontend == "logmel":
            self.frontend = LogMel(cfg.n_mels, cfg.f_min, cfg.f_max, cfg.window_seconds, cfg.frame_rate)
            self.input_norm = nn.BatchNorm1d(cfg.n_mels)
        self.encoder = nn.Conv1d(cfg.n_mels if cfg.frontend == "logmel" else 1, cfg.d_model, 1)
        self.blocks = nn.ModuleList(MRConvBlock(cfg, i) for i in range(cfg.depth))
        self.decoder = nn.Linear(cfg.d_model, cfg.n_classes)

    @property
    def labels(self) -> list[str]:
        return self.config.labels

    @property
    def reparameterized(self) -> bool:
        return self.blocks[0].conv.merged

    def max_samples(self, sample_rate: float | None = None) -> int:
        """The longest input (the model's window) at `sample_rate`."""
        rate = sample_rate or self.config.sample_rate
        return math.ceil(rate * self.config.clip_seconds - 1e-9)

    def rate_range(self) -> tuple[float, float]:
        """The input sample rates this model runs at, in Hz."""
        cfg = self.config
        low = max(cfg.sample_rate * MIN_RATE_RATIO, 2 * cfg.f_max if cfg.frontend == "logmel" else 0)
        return low, cfg.sample_rate * MAX_RATE_RATIO

    def forward(
        self, x: torch.Tensor, sample_rate: float | None = None, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        cfg = self.config
        if x.dim() != 2:
            raise ValueError(f"expected a waveform batch of shape (batch, time), got {tuple(x.shape)}")
        low, high = self.rate_range()
        if sample_rate is not None and not low <= sample_rate <= high:
            raise ValueError(
                f"sample_rate {sample_rate} Hz is out of range for a model trained at {cfg.sample_rate} Hz: expected "
                f"{low:g} to {high:g} Hz"
            )
        rate = sample_rate or cfg.sample_rate
        rate_ratio = 1 if rate == cfg.sample_rate else rate / cfg.sample_rate
        if x.shape[1] > self.max_samples(sample_rate):
            raise ValueError(
                f"input of {x.shape[1]} samples is longer than the model's {cfg.clip_seconds:g} s window "
                f"({self.max_samples(sample_rate)} samples at {sample_rate or cfg.sample_rate} Hz)"
            )
        if lengths is not None:
            x = x * (torch.arange(x.shape[1], device=x.device) < lengths[:, None].to(x.device))
        if cfg.frontend == "logmel":
            features = self.input_norm(self.frontend(x, rate))  # (B, n_mels, frames)
            rate_ratio = 1  # the stack runs at the frame rate, whatever the audio's rate
        else:
            features = ((x - cfg.input_mean) * (0.2 / cfg.input_std))[:, None, :]  # (B, 1, T)
        mask = None
        if lengths is not None:
            steps = torch.ceil(lengths * (cfg.frame_rate / rate) - 1e-9).long() if cfg.frontend == "logmel" else lengths
            mask = (torch.arange(features.shape[-1], device=x.device) < steps[:, None].to(x.device))
            mask = mask.to(features.dtype)[:, None, :]  # (B, 1, T)
        h = self.encoder(features)  # (B, H, T)
        for block in self.blocks:
            h = block(h, rate_ratio, mask)
        if mask is None:
            pooled = h.mean(dim=-1)
        else:
            pooled = (h * mask).sum(-1) / mask.sum(-1).clamp_min(1)
        return self.decoder(pooled)  # (B, classes)

    @torch.no_grad()
    def reparameterize(self) -> "MRConvClassifier":
        """Merge every MRConv layer's branches into one kernel and bias; puts the model in eval mode for good."""
        self.eval()
        for block in self.blocks:
            block.conv.reparameterize()
        return self

    def parameter_groups(self, lr: float = 0.005, weight_decay: float = 0.05, kernel_lr: float = 0.001) -> list[dict]:
        """AdamW groups (paper D.1.1): kernel parameters with their own lr and no weight decay, the rest."""
        kernel, rest = [], []
        for name, p in self.named_parameters():
            (kernel if name.rsplit(".", 1)[-1] in KERNEL_PARAMETER_NAMES else rest).append(p)
        return [
            {"params": kernel, "lr": kernel_lr, "weight_decay": 0.0, "name": "kernel"},
            {"params": rest, "lr": lr, "weight_decay": weight_decay, "name": "rest"},
        ]

    def save_pretrained(self, directory) -> None:
        from .checkpoint import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory, map_location="cpu") -> "MRConvClassifier":
        from .checkpoint import load_pretrained

        return load_pretrained(directory, map_location)
