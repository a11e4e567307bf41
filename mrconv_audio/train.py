"""Training on Speech Commands, readable top to bottom (paper appendix D.1 recipe by default).

    run folder/
      metrics.jsonl      one line per epoch: loss, accuracy, validation accuracy at the rate and half of it, lr, time
      state.safetensors  everything to resume (model, optimizer, scheduler, RNGs, epoch, step), one atomic file
      best/              the best model by validation accuracy (save_pretrained), best-merged/ its merged form
      skipped.json       clips that could not be read, with the reason
Every file is written atomically (a temporary file renamed over it), by the first process only.

One process, or several launched with torchrun (distributed.py): `batch_size` is always the global batch, which the
processes share. A DataLoader reads the cached clips in worker processes; augmentation runs in batches on the device.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import atomic_write
from .data.augment import AugmentConfig, Augmenter
from .data.cache import load_split
from .data.loader import batch_loader, default_workers, to_device
from .data.speech_commands import SILENCE, SpeechCommands, task_labels
from .distributed import World, convert_batchnorms, global_batches, setup, shard, shutdown
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
    workers: int | None = None  # DataLoader worker processes per training process (None: data.loader.default_workers)
    amp: bool = True  # bf16 autocast on CUDA (the FFTs stay in float32)
    compile: bool = False  # torch.compile the model for training


def warmup_cosine(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


# ---- resume state: safetensors for tensors, the rest as JSON in the file's metadata (no pickle) ------------------
def process_rng_states(world: World, device) -> dict:
    """Every process's torch (and CUDA) RNG state, for the resume state: dropout masks differ between processes.
    A collective: every process calls it."""
    states = {"torch": world.gather(torch.get_rng_state(), device)}
    if device.type == "cuda":
        states["cuda"] = world.gather(torch.cuda.get_rng_state(device), device)
    return states


def save_state(path: Path, model, optimizer, scheduler, generators: dict, progress: dict, rng: dict) -> None:
    """`rng`: process_rng_states(); process r's states are saved as rng.torch.r (rng.torch for process 0)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim = optimizer.state_dict()
    for index, state in optim["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
    for kind, states in rng.items():
        for rank, state in enumerate(states):
            tensors[f"rng.{kind}" + (f".{rank}" if rank else "")] = state
    for name, gen in generators.items():
        tensors[f"rng.{name}"] = gen.get_state()
    meta = {"progress": progress, "param_groups": optim["param_groups"], "scheduler": scheduler.state_dict()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"state": json.dumps(meta)}))


def load_state(path: Path, model, optimizer, scheduler, generators: dict, world: World = World(),
               device=torch.device("cpu")) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file

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
    for name, gen in generators.items():
        gen.set_state(tensors[f"rng.{name}"])
    suffix = f".{world.rank}" if world.rank else ""
    if f"rng.torch{suffix}" in tensors:
        torch.set_rng_state(tensors[f"rng.torch{suffix}"])
    else:  # resumed with more processes than saved it: a fresh dropout stream for the new ones
        torch.manual_seed(meta["progress"]["step"] * 1_000_003 + world.rank)
    if f"rng.cuda{suffix}" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors[f"rng.cuda{suffix}"], device)
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


def write_json(path: Path, value) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=1) + "\n"))


def append_line(path: Path, record: dict) -> None:
    """Add a JSON line to `path`, atomically: the file is rewritten whole (it holds one short line per epoch)."""
    old = path.read_text() if path.exists() else ""
    atomic_write(path, lambda tmp: Path(tmp).write_text(old + json.dumps(record) + "\n"))


# A resumed run may change how it runs (more epochs, another device, workers, process count), not what it trains.
RESUMABLE_CHANGES = {"epochs", "device", "workers", "cache_dir", "checkpoint_every", "out", "compile", "amp",
                     "processes"}


def check_same_run(path: Path, cfg: "TrainConfig") -> None:
    """Refuse to resume a run whose stored configuration differs from `cfg` in what it trains, naming the field."""
    if not path.is_file():
        return
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({e}); cannot check that --resume continues the same run") from None
    current = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as it would be stored: tuples become lists
    for field_name in sorted((set(stored) | set(current)) - RESUMABLE_CHANGES):
        if stored.get(field_name) != current.get(field_name):
            raise ValueError(
                f"{path.parent}: cannot resume with a different {field_name!r}: the run was started with "
                f"{stored.get(field_name)!r}, this command gives {current.get(field_name)!r} (use the same settings, "
                "or another --out for a new run)"
            )


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


def load_data(cfg: "TrainConfig", log) -> tuple:
    """The training split (extra roots joined later) and the validation split, decoded into the cache."""
    dataset = SpeechCommands(cfg.data_root)
    load = lambda split: load_split(dataset, cfg.task, split, cfg.sample_rate, cache_dir=cfg.cache_dir, seed=cfg.seed,
                                    log=log, unknown_fraction=None if cfg.all_unknown and split == "train" else 0.1)
    train_split, val_split = load("train"), load("validation")
    for warning in dataset.warnings:
        log(f"warning: {warning}")
    # Files refused while reading the tree (background noise, FIFOs, names that are not UTF-8) are listed with the
    # training split's unreadable clips: skipped.json names every file left out.
    return dataclasses.replace(train_split, skipped=dataset.skipped + train_split.skipped), val_split


def build_classifier(cfg: "TrainConfig", labels: list[str], train_split) -> MRConvClassifier:
    """The preset with the task's labels and the input statistics of (up to 4,000 randomly chosen) real training clips
    (paper D.4; used by the waveform front end)."""
    picked = np.random.default_rng(cfg.seed).permutation(len(train_split))[:4000]
    sample = train_split.waveforms(np.sort(picked))
    model_cfg = MRConvConfig.preset(cfg.preset, labels=labels, sample_rate=cfg.sample_rate,
                                    input_mean=float(sample.mean()), input_std=float(sample.std()),
                                    **cfg.model_overrides)
    return MRConvClassifier(model_cfg)


def make_augmenter(cfg: "TrainConfig", split, labels: list[str], generator: torch.Generator) -> Augmenter:
    """The training recipe's augmentation; the split's _silence_ clips are its background-noise bank."""
    noise, silence = None, labels.index(SILENCE) if SILENCE in labels else None
    if silence is not None:
        noise = split.waveforms(np.flatnonzero(split.labels == silence))
    augment_cfg = AugmentConfig(speed=(0.9, 1.1) if cfg.speed_perturbation else None)
    return Augmenter(augment_cfg, noise, cfg.sample_rate, silence, generator)


class _NoBar:  # tqdm is optional (a bare GPU machine may not have it)
    def __init__(self, *args, **kwargs): pass
    def update(self, n=1): pass
    def set_postfix(self, **kwargs): pass
    def close(self): pass


def progress_bar(total: int, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True, disable=None if enabled else True)


def train_epoch(step_model, optimizer, scheduler, split, batches: list[np.ndarray], world: World, device,
                augmenter: Augmenter | None, weights: torch.Tensor | None, workers: int, amp: bool,
                after_step=None, bar=_NoBar()) -> tuple[float, int, int]:
    """AdamW steps on `batches` (global batches of clip indices; this process trains on its shard of each).
    Returns the sum over every process of (loss x clips, correct clips, clips). `after_step(i, running)`, if given,
    is called after step i; `running()` gives those sums so far (a collective: every process calls it or none)."""
    loader = batch_loader(split, [b[shard(b, world)] for b in batches], workers, pin=device.type == "cuda")
    device_weights = weights.to(device) if weights is not None else None
    sums, seen = torch.zeros(2, device=device), 0  # loss x clips, correct: summed on the device, read rarely
    start = time.time()
    for i, (batch, (audio, y)) in enumerate(zip(batches, loader)):
        x, y = to_device(audio, y, device)
        batch_labels = torch.from_numpy(split.labels[batch])
        if augmenter is not None:  # drawn for the whole global batch: the same on every process
            params = augmenter.draw(len(batch), batch_labels)
            x = augmenter.apply(x, Augmenter.rows(params, shard(batch, world)))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = step_model(x)
        # The global batch's mean loss (weighted by class): this process's share of the sum over the whole batch's
        # weight. DistributedDataParallel averages the processes' gradients, hence the factor world.size.
        total = float(weights[batch_labels].sum()) if weights is not None else len(batch)
        loss = F.cross_entropy(logits.float(), y, weight=device_weights, reduction="sum") / total
        optimizer.zero_grad(set_to_none=True)
        (loss * world.size).backward()
        optimizer.step()
        scheduler.step()

        sums += torch.stack([loss.detach() * len(batch), (logits.argmax(-1) == y).sum().float()])
        seen += len(y)
        bar.update()
        if i % 20 == 0:  # reading the sums waits for the device: not every step
            bar.set_postfix(loss=f"{sums[0].item() / (seen * world.size):.3f}",
                            clips_per_s=f"{seen * world.size / (time.time() - start):.1f}")
        if after_step is not None:
            after_step(i, lambda: world.sum([*sums.tolist(), seen], device))
    loss_sum, correct, seen = world.sum([*sums.tolist(), seen], device)
    return loss_sum, int(correct), int(seen)


def train(cfg: TrainConfig, log=print, build_model=build_classifier, data=load_data) -> Path:
    """Train and return the run folder. `build_model(cfg, labels, train_split)` makes a fresh model (e.g. a baseline
    with the same interface: labels, rate_range, parameter_groups, save_pretrained, from_pretrained, reparameterize).
    `data(cfg, log)` gives the training and validation splits (CachedSplit-like). Under torchrun, every process
    calls it; the first alone logs, validates and writes files."""
    world, device = setup(cfg.device)
    try:
        return _train(cfg, world, device, log if world.main else (lambda *a: None), build_model, data)
    finally:
        shutdown()


def _train(cfg: TrainConfig, world: World, device, log, build_model, data) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    # Data: decoded once into the cache (by the first process while the others wait), then memory-mapped.
    if not world.main:
        world.barrier()
    train_split, val_split = data(cfg, log)
    if world.main:
        world.barrier()
    skipped = train_split.skipped + val_split.skipped
    if world.main:
        write_json(out / "skipped.json", skipped)
    if len(train_split) == 0:
        raise ValueError(f"{cfg.data_root}: no readable training clips for task {cfg.task}")
    labels = task_labels(cfg.task)

    # Model: a saved one to fine-tune, or a fresh one; the same initial weights in every process.
    if cfg.init_from:
        model = warm_start(cfg.init_from, labels, cfg.sample_rate, cfg.model_overrides)
        log(f"starting from the weights in {cfg.init_from}")
    else:
        model = build_model(cfg, labels, train_split)
    if world.size > 1:
        convert_batchnorms(model)  # statistics of the global batch, the per-branch norms included
    model.to(device)
    if world.rank:  # each process draws its own dropout masks
        torch.manual_seed(cfg.seed + 7919 * world.rank)
    for root in cfg.extra_train:  # e.g. synthetic speakers: they train, but never set the statistics above
        extra_data = SpeechCommands(root)
        extra = load_split(extra_data, cfg.task, "train", cfg.sample_rate, cache_dir=cfg.cache_dir,
                           seed=cfg.seed, log=log, silence_fraction=0.0)
        log(f"adding {len(extra)} training clips from {root}")
        train_split = train_split.concat(extra)
        skipped += extra_data.skipped + extra.skipped
        if world.main:
            write_json(out / "skipped.json", skipped)
    if skipped:
        log(f"skipped {len(skipped)} unreadable files (listed in {out / 'skipped.json'}), e.g. {skipped[0]['path']}")
    optimizer = torch.optim.AdamW(model.parameter_groups(cfg.lr, cfg.weight_decay, cfg.kernel_lr))
    steps_per_epoch = len(global_batches(np.arange(len(train_split)), cfg.batch_size, world.size))
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, max(1, round(cfg.warmup_epochs * steps_per_epoch))))

    weights = class_weights(train_split.labels, len(labels)) if cfg.balance_classes else None
    augment_gen = torch.Generator().manual_seed(cfg.seed + 1)
    augmenter = make_augmenter(cfg, train_split, labels, augment_gen).to(device) if cfg.augment else None

    state_path = out / "state.safetensors"
    progress = {"epoch": 0, "step": 0, "best_accuracy": -1.0}
    if state_path.exists():
        check_same_run(out / "train_config.json", cfg)
        progress = load_state(state_path, model, optimizer, scheduler, {"augment": augment_gen}, world, device)
        log(f"resuming from {state_path}: epoch {progress['epoch'] + 1}, step {progress['step']}")
        if world.main:
            drop_unsaved_epochs(out / "metrics.jsonl", progress["epoch"])
    if world.main:
        write_json(out / "train_config.json", {**dataclasses.asdict(cfg), "processes": world.size})
    step_model = model
    if world.size > 1:
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        step_model = torch.compile(step_model)
    workers = default_workers(device, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if cfg.workers is None else cfg.workers
    amp = cfg.amp and device.type == "cuda"
    log(f"training {cfg.init_from or cfg.preset} on {cfg.task}: {len(train_split)} clips, {steps_per_epoch} steps/epoch "
        f"of {cfg.batch_size} clips over {world.size} process(es), {sum(p.numel() for p in model.parameters()):,} "
        f"parameters, device {device}, {workers} loader workers per process" + (", bf16 autocast" if amp else ""))

    def save(progress: dict) -> None:  # every process takes part (RNG states), the first one writes
        rng = process_rng_states(world, device)
        if world.main:
            save_state(state_path, model, optimizer, scheduler, {"augment": augment_gen}, progress, rng)

    for epoch in range(progress["epoch"], cfg.epochs):
        # The same order in every process, whatever their number: it depends on the seed and the epoch only.
        order = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        batches = global_batches(order.numpy(), cfg.batch_size, world.size)
        first = progress["step"]
        # The epoch's sums (loss x clips, correct, clips) over the steps before `first`, run before a resume: the
        # epoch's metrics count every step of it, not only those after the resume.
        before = progress.get("epoch_sums", [0.0, 0, 0])

        def after_step(i: int, running) -> None:
            step = first + i + 1
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < steps_per_epoch:
                sums = [a + b for a, b in zip(before, running())]
                save({**progress, "epoch": epoch, "step": step, "epoch_sums": sums})
                log(f"checkpoint saved: epoch {epoch + 1} step {step}")

        model.train()
        start = time.time()
        bar = progress_bar(steps_per_epoch - first, f"epoch {epoch + 1}/{cfg.epochs}", world.main)
        loss_sum, correct, seen = train_epoch(step_model, optimizer, scheduler, train_split, batches[first:], world,
                                              device, augmenter, weights, workers, amp, after_step, bar)
        bar.close()
        loss_sum, correct, seen = loss_sum + before[0], correct + int(before[1]), seen + int(before[2])

        progress = {"epoch": epoch + 1, "step": 0, "best_accuracy": progress["best_accuracy"]}
        if world.main:
            val_acc, val_half = validate(model, val_split, device, cfg.sample_rate)
            record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
                      "val_accuracy": val_acc, f"val_accuracy_{cfg.sample_rate // 2}hz": val_half,
                      **{("lr" if g["name"] == "rest" else f"{g['name']}_lr"): g["lr"] for g in optimizer.param_groups},
                      "seconds": round(time.time() - start, 2), "clips": seen, "skipped_clips": len(skipped)}
            append_line(out / "metrics.jsonl", record)
            log(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}, train acc {record['train_accuracy']:.4f}, "
                f"val acc {val_acc:.4f} ({cfg.sample_rate} Hz) {val_half:.4f} ({cfg.sample_rate // 2} Hz), "
                f"{record['seconds']:.0f} s")
            if val_acc >= progress["best_accuracy"]:
                progress["best_accuracy"] = val_acc
                model.save_pretrained(out / "best")
                merged = type(model).from_pretrained(out / "best").reparameterize()
                merged.save_pretrained(out / "best-merged")
        save(progress)  # only the first process's progress is written
    return out
