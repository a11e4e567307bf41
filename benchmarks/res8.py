"""The peer: res8 (Tang & Lin 2018, "Deep residual learning for small-footprint keyword spotting"), a log-mel CNN,
trained by the project's own training loop on exactly the same splits, class balance and augmentation as MRConv.

It is a baseline for the accuracy tables, not a product: the apps never use it. It reads the same log-mel features
(mrconv_audio.frontend.LogMel, 40 bands, 25 ms windows, 10 ms hop), so it runs at any rate the same way.

    python benchmarks/res8.py train --data-root A [--data-root B] --out runs/res8 [--epochs 30] [--resume]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mrconv_audio.frontend import LogMel  # noqa: E402


class Res8(nn.Module):
    """x: (batch, time) waveform -> logits. 45 channels, 3x3 convolutions, 3 residual blocks, 4x3 average pool."""

    def __init__(self, labels: list[str], sample_rate: int = 16000, channels: int = 45, n_mels: int = 40,
                 f_max: float = 4000.0):
        super().__init__()
        self.config = SimpleNamespace(labels=list(labels), sample_rate=sample_rate, clip_seconds=1.0, n_mels=n_mels,
                                      channels=channels, f_max=f_max, n_classes=len(labels))
        self.frontend = LogMel(n_mels, f_max=f_max)
        self.input_norm = nn.BatchNorm1d(n_mels)
        self.conv0 = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.pool = nn.AvgPool2d((4, 3))
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(6))
        self.norms = nn.ModuleList(nn.BatchNorm2d(channels, affine=False) for _ in range(6))
        self.output = nn.Linear(channels, len(labels))

    labels = property(lambda self: self.config.labels)
    reparameterized = True  # nothing to merge

    def max_samples(self, sample_rate=None) -> int:
        return round((sample_rate or self.config.sample_rate) * self.config.clip_seconds)

    def rate_range(self) -> tuple[float, float]:
        return 2 * self.config.f_max, 12 * self.config.sample_rate

    def forward(self, x: torch.Tensor, sample_rate: float | None = None) -> torch.Tensor:
        low, high = self.rate_range()
        rate = sample_rate or self.config.sample_rate
        if not low <= rate <= high:
            raise ValueError(f"sample_rate {rate} Hz is out of range: expected {low:g} to {high:g} Hz")
        h = self.input_norm(self.frontend(x, rate))[:, None]  # (B, 1, n_mels, frames)
        h = self.pool(F.relu(self.conv0(h)))
        skip = h
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = F.relu(conv(h))
            if i % 2 == 1:  # a residual connection every two convolutions
                h = h + skip
                skip = h
            h = norm(h)
        return self.output(h.mean(dim=(2, 3)))

    def reparameterize(self) -> "Res8":
        return self.eval()

    def parameter_groups(self, lr=0.005, weight_decay=0.05, kernel_lr=None) -> list[dict]:
        return [{"params": list(self.parameters()), "lr": lr, "weight_decay": weight_decay, "name": "rest"}]

    def save_pretrained(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, directory / "model.safetensors")
        (directory / "config.json").write_text(json.dumps({"format": "res8-peer", **vars(self.config)}, indent=1))

    @classmethod
    def from_pretrained(cls, directory, map_location="cpu") -> "Res8":
        meta = json.loads((Path(directory) / "config.json").read_text())
        model = cls(meta["labels"], meta["sample_rate"], meta["channels"], meta["n_mels"], meta["f_max"])
        model.load_state_dict(load_file(Path(directory) / "model.safetensors"))
        return model.eval().to(map_location)


def build_res8(cfg, labels, train_split) -> Res8:
    return Res8(labels, cfg.sample_rate)


def main(argv=None) -> int:
    from mrconv_audio.cpu import tune_allocator
    from mrconv_audio.train import TrainConfig, train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train res8 with mrconv_audio.train (same data, balance, augmentation)")
    p.add_argument("--data-root", action="append", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--task", default="kws12", choices=["kws12", "sc35"])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir")
    p.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    tune_allocator()
    if (Path(args.out) / "state.safetensors").exists() and not args.resume:
        parser.error(f"{args.out} holds an earlier run; pass --resume or choose another --out")
    cfg = TrainConfig(data_root=args.data_root, out=args.out, preset="res8", task=args.task, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed, cache_dir=args.cache_dir)
    train(cfg, build_model=build_res8)
    return 0


if __name__ == "__main__":
    sys.exit(main())
