"""Training on Speech Commands, readable top to bottom (paper appendix D.1 recipe by default).

    run folder/
      metrics.jsonl      one line per epoch: loss, accuracy, validation accuracy at the rate and half of it, lr, time
      state.safetensors  everything to resume (model, optimizer, scheduler, RNGs, epoch, step), one atomic file
      best/              the best model by validation accuracy (save_pretrained), best-merged/ its merged form
      skipped.json       clips that could not be read, with the reason
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .atomic import atomic_write
from .data.augment import AugmentConfig, Augmenter
from .data.cache import load_split
from .data.speech_commands import SILENCE, SpeechCommands, task_labels
from .device import pick_device
from .evaluate import predict, score
from .model import MRConvClassifier, MRConvConfig


@dataclass
class TrainConfig:
    data_root: str | list  # one Speech Commands root or several (their splits are joined)
    out: str
    preset: str = "sc35-paper"
    task: str = "sc35"
    epochs: int = 40
    batch_size: int = 16
    lr: float = 0.005
    kernel_lr: float = 0.001
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    seed: int = 0
    sample_rate: int = 16000  # train at this rate (clips are resampled); the model runs at any rate afterwards
    device: str = "auto"
    augment: bool = True
    speed_perturbation: bool = True
    checkpoint_every: int = 0  # also save the resume state every N steps inside an epoch (0: at epoch ends only)
    cache_dir: str | None = None
    model_overrides: dict = field(default_factory=dict)  # MRConvConfig fields, e.g. {"d_model": 64}
    extra_train: list = field(default_factory=list)  # more training clips: Speech Commands-layout folders
    init_from: str | None = None  # start from this saved model's weights (fine-tuning) instead of the preset's init
    all_unknown: bool = True  # kws12: every non-keyword training clip is an _unknown_ example (not 10% of keywords)
    balance_classes: bool = True  # weight the loss by 1 / class count: rare words (on, off) count as much as others


def warmup_cosine(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


# ---- resume state: safetensors for tensors, the rest as JSON in the file's metadata (no pickle) ------------------
def save_state(path: Path, model, optimizer, scheduler, generators: dict, progress: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim = optimizer.state_dict()
    for index, state in optim["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    for name, gen in generators.items():
        tensors[f"rng.{name}"] = gen.get_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {"progress": progress, "param_groups": optim["param_groups"], "scheduler": scheduler.state_dict()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"state": json.dumps(meta)}))


def load_state(path: Path, model, optimizer, scheduler, generators: dict) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["state"])
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    for name, gen in generators.items():
        gen.set_state(tensors[f"rng.{name}"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return meta["progress"]


def warm_start(path, labels: list[str], sample_rate: int, overrides: dict) -> MRConvClassifier:
    """A trainable copy of the saved model in `path` (its architecture and input statistics, new `overrides`)."""
    saved = MRConvClassifier.from_pretrained(path)
    if saved.reparameterized:
        raise ValueError(f"{path}: a merged (reparameterized) model cannot be trained; start from its branch form")
    if list(saved.config.labels) != list(labels):
        raise ValueError(f"{path}: labels {saved.config.labels} do not match the task's {labels}")
    if saved.config.sample_rate != sample_rate:
        # The sub-kernel lengths are counted in samples at the model's own rate, so the rate is part of the architecture.
        raise ValueError(f"{path}: the model was trained at {saved.config.sample_rate} Hz, expected --sample-rate "
                         f"{saved.config.sample_rate} (got {sample_rate})")
    model = MRConvClassifier(dataclasses.replace(saved.config, **overrides))
    try:
        model.load_state_dict(saved.state_dict())
    except RuntimeError as error:
        raise ValueError(f"{path}: its weights do not fit the model with {overrides}: {error}") from None
    return model


def drop_unsaved_epochs(metrics_path: Path, saved_epochs: int) -> None:
    """A run killed between writing an epoch's metrics and its state repeats that epoch: keep one line for it."""
    if not metrics_path.exists():
        return
    lines = metrics_path.read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["epoch"] <= saved_epochs]
    if len(kept) < len(lines):
        atomic_write(metrics_path, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in kept)))


def validate(model, split, device, rate: int) -> tuple[float, float]:
    """Validation accuracy at the training rate and, zero-shot, at half of it (naive decimation; nan when the model
    cannot run there)."""
    model.eval()
    x, y = split.waveforms(np.arange(len(split))), torch.from_numpy(split.labels)
    full, _, _ = score(predict(model, x, device=device), y, model.labels)
    half = float("nan")
    if rate / 2 >= model.rate_range()[0]:
        half, _, _ = score(predict(model, x[:, ::2], sample_rate=rate / 2, device=device), y, model.labels)
    return full, half


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Loss weights 1 / count, scaled so that the average training example weighs 1 (absent classes: 0)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def build_classifier(cfg: "TrainConfig", labels: list[str], train_split) -> MRConvClassifier:
    """The preset with the task's labels and the input statistics of (up to 4,000 randomly chosen) real training clips
    (paper D.4; used by the waveform front end)."""
    picked = np.random.default_rng(cfg.seed).permutation(len(train_split))[:4000]
    sample = train_split.waveforms(np.sort(picked))
    model_cfg = MRConvConfig.preset(cfg.preset, labels=labels, sample_rate=cfg.sample_rate,
                                    input_mean=float(sample.mean()), input_std=float(sample.std()),
                                    **cfg.model_overrides)
    return MRConvClassifier(model_cfg)


def train(cfg: TrainConfig, log=print, build_model=build_classifier) -> Path:
    """Train and return the run folder. `build_model(cfg, labels, train_split)` makes a fresh model (e.g. a baseline
    with the same interface: labels, rate_range, parameter_groups, save_pretrained, from_pretrained, reparameterize)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)

    # Data: decoded once into the cache, then memory-mapped.
    dataset = SpeechCommands(cfg.data_root)
    load = lambda split: load_split(dataset, cfg.task, split, cfg.sample_rate, cache_dir=cfg.cache_dir, seed=cfg.seed,
                                    log=log, unknown_fraction=None if cfg.all_unknown and split == "train" else 0.1)
    train_split, val_split = load("train"), load("validation")
    for warning in dataset.warnings:
        log(f"warning: {warning}")
    skipped = train_split.skipped + val_split.skipped
    (out / "skipped.json").write_text(json.dumps(skipped, indent=1) + "\n")
    if skipped:
        log(f"skipped {len(skipped)} unreadable clips (listed in {out / 'skipped.json'}), e.g. {skipped[0]['path']}")
    if len(train_split) == 0:
        raise ValueError(f"{cfg.data_root}: no readable training clips for task {cfg.task}")
    labels = task_labels(cfg.task)

    # Model: a saved one to fine-tune, or a fresh one.
    if cfg.init_from:
        model = warm_start(cfg.init_from, labels, cfg.sample_rate, cfg.model_overrides).to(device)
        log(f"starting from the weights in {cfg.init_from}")
    else:
        model = build_model(cfg, labels, train_split).to(device)
    for root in cfg.extra_train:  # e.g. synthetic speakers: they train, but never set the statistics above
        extra = load_split(SpeechCommands(root), cfg.task, "train", cfg.sample_rate, cache_dir=cfg.cache_dir,
                           seed=cfg.seed, log=log, silence_fraction=0.0)
        log(f"adding {len(extra)} training clips from {root}")
        train_split = train_split.concat(extra)
    optimizer = torch.optim.AdamW(model.parameter_groups(cfg.lr, cfg.weight_decay, cfg.kernel_lr))
    steps_per_epoch = math.ceil(len(train_split) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, max(1, round(cfg.warmup_epochs * steps_per_epoch))))

    weights = class_weights(train_split.labels, len(labels)).to(device) if cfg.balance_classes else None
    augment_gen = torch.Generator().manual_seed(cfg.seed + 1)
    noise = None
    if SILENCE in labels:
        silence_index = labels.index(SILENCE)
        noise = train_split.waveforms(np.flatnonzero(train_split.labels == silence_index))
    augment_cfg = AugmentConfig(speed=(0.9, 1.1) if cfg.speed_perturbation else None)
    augmenter = Augmenter(augment_cfg, noise, cfg.sample_rate,
                          labels.index(SILENCE) if SILENCE in labels else None, augment_gen)

    state_path = out / "state.safetensors"
    progress = {"epoch": 0, "step": 0, "best_accuracy": -1.0}
    if state_path.exists():
        progress = load_state(state_path, model, optimizer, scheduler, {"augment": augment_gen})
        log(f"resuming from {state_path}: epoch {progress['epoch'] + 1}, step {progress['step']}")
        drop_unsaved_epochs(out / "metrics.jsonl", progress["epoch"])
    (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1) + "\n")
    use_amp = device.type == "cuda"
    log(f"training {cfg.init_from or cfg.preset} on {cfg.task}: {len(train_split)} clips, {steps_per_epoch} steps/epoch, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, device {device}")

    for epoch in range(progress["epoch"], cfg.epochs):
        order = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        model.train()
        start, seen, loss_sum, correct = time.time(), 0, 0.0, 0
        bar = tqdm(range(progress["step"], steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="step", leave=False, dynamic_ncols=True, disable=None)
        for step in bar:
            index = order[step * cfg.batch_size : (step + 1) * cfg.batch_size].numpy()
            x, y = train_split.waveforms(index), torch.from_numpy(train_split.labels[index])
            if cfg.augment:
                x = augmenter(x, y)
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, weight=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()

            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(-1) == y).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", clips_per_s=f"{seen / (time.time() - start):.1f}")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps_per_epoch:
                save_state(state_path, model, optimizer, scheduler, {"augment": augment_gen},
                           {**progress, "epoch": epoch, "step": step + 1})
                log(f"checkpoint saved: epoch {epoch + 1} step {step + 1}")
        bar.close()

        val_acc, val_half = validate(model, val_split, device, cfg.sample_rate)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                  "val_accuracy": val_acc, f"val_accuracy_{cfg.sample_rate // 2}hz": val_half,
                  **{("lr" if g["name"] == "rest" else f"{g['name']}_lr"): g["lr"] for g in optimizer.param_groups},
                  "seconds": round(time.time() - start, 2), "clips": seen, "skipped_clips": len(skipped)}
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        log(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}, train acc {record['train_accuracy']:.4f}, "
            f"val acc {val_acc:.4f} ({cfg.sample_rate} Hz) {val_half:.4f} ({cfg.sample_rate // 2} Hz), "
            f"{record['seconds']:.0f} s")
        progress = {"epoch": epoch + 1, "step": 0, "best_accuracy": max(progress["best_accuracy"], val_acc)}
        if val_acc >= progress["best_accuracy"]:
            model.save_pretrained(out / "best")
            merged = type(model).from_pretrained(out / "best").reparameterize()
            merged.save_pretrained(out / "best-merged")
        save_state(state_path, model, optimizer, scheduler, {"augment": augment_gen}, progress)
    return out
