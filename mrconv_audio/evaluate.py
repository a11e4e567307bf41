"""Multi-rate evaluation: accuracy of a model on audio brought to each sample rate, two ways.

mode "kernel": the model runs natively at the audio's rate (its Fourier kernels resampled).
mode "input":  the audio is resampled back to the model's rate first (the usual baseline).
Audio is brought to each rate from the split's 16 kHz clips by naive decimation (the paper's zero-shot protocol,
integer factors only) or by sinc resampling (torchaudio); `decimate` falls back to sinc where no integer factor exists.
"""
from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .conditioning import fit_full_scale
from .data.audio import AudioError, decimate, load_audio, resample
from .data.speech_commands import UNKNOWN
from .device import pick_device
from .model import MRConvClassifier
from .paths import default_model_dir  # noqa: F401  (here before paths.py; callers import it from here)

DEFAULT_RATES = [8000, 11025, 16000, 22050, 32000, 44100, 48000]
MODES = ("kernel", "input")


@torch.no_grad()
def predict(model: MRConvClassifier, waveforms: torch.Tensor, sample_rate: float | None = None,
            batch_size: int = 64, device=None) -> torch.Tensor:
    """Logits for waveforms (N, time) at `sample_rate` (None: the model's rate). Model must be in eval mode."""
    device = device or next(model.parameters()).device
    out = [model(waveforms[i : i + batch_size].to(device), sample_rate=sample_rate).float().cpu()
           for i in range(0, len(waveforms), batch_size)]
    logits = torch.cat(out) if out else torch.zeros(0, model.config.n_classes)
    bad = int((~torch.isfinite(logits).all(-1)).sum())
    if bad:  # an argmax of NaN would count as a prediction
        from .streaming import NonFiniteScores

        raise NonFiniteScores(f"the model gave non-finite scores (NaN or infinity) for {bad} of {len(logits)} clips"
                              f" at {sample_rate or model.config.sample_rate} Hz: its weights are not usable")
    return logits


def bring_to_rate(x: torch.Tensor, rate: int, target: int, method: str) -> tuple[torch.Tensor, str]:
    """Audio (N, time) at `rate` -> `target`, by naive decimation where an integer factor allows, else sinc."""
    if target == rate:
        return x, "none"
    if method == "decimate" and target < rate and rate % target == 0:
        return decimate(x, rate // target), "decimate"
    return resample(x, rate, target), "sinc"


@dataclass
class RateResult:
    rate: int
    mode: str
    accuracy: float
    n: int
    resample: str
    per_class: dict = field(default_factory=dict)
    confusion: list = field(default_factory=list)


def score(logits: torch.Tensor, labels: torch.Tensor, names: list[str]) -> tuple[float, dict, list]:
    pred = logits.argmax(-1)
    confusion = torch.zeros(len(names), len(names), dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = {name: round(float(confusion[i, i] / confusion[i].sum()), 4)
                 for i, name in enumerate(names) if confusion[i].sum() > 0}
    accuracy = float((pred == labels).float().mean()) if len(labels) else float("nan")
    return accuracy, per_class, confusion.tolist()


def evaluate_rates(model, waveforms: torch.Tensor, labels: torch.Tensor, source_rate: int, rates, modes=MODES,
                   input_resample: str = "decimate", batch_size: int = 64, log=print,
                   progress=None) -> list[RateResult]:
    """Accuracy for each (rate, mode) of 1-clip-per-row audio recorded at `source_rate`.
    `progress(clips)`, if given, is called after each (rate, mode) with the number of clips classified."""
    model_rate = model.config.sample_rate
    results = []
    for rate in rates:
        at_rate, how = bring_to_rate(waveforms, source_rate, rate, input_resample)
        for mode in modes:
            if mode == "kernel":
                logits = predict(model, at_rate, sample_rate=rate, batch_size=batch_size)
            else:
                back = resample(at_rate, rate, model_rate)
                back = back[:, : model.max_samples()]
                logits = predict(model, back, batch_size=batch_size)
            acc, per_class, confusion = score(logits, labels, model.labels)
            results.append(RateResult(rate, mode, acc, len(labels), how, per_class, confusion))
            if progress is not None:
                progress(len(labels))
            audio = {"none": f"as recorded at {source_rate} Hz", "decimate": f"decimated from {source_rate} Hz",
                     "sinc": f"sinc-resampled from {source_rate} Hz"}[how]
            log(f"{rate:>6} Hz  {mode:<6}  accuracy {100 * acc:6.2f}%  ({len(labels)} clips, audio {audio})")
    return results


def read_folder(folder, labels: list[str], max_seconds: float = 600,
                rate_range: tuple[float, float] | None = None) -> tuple[list, dict, list]:
    """A folder of <label>/*.wav at their own rates -> [(waveform, rate, label index)], skipped counts by reason,
    and a message naming each skipped file. Files at rates outside `rate_range` (low, high) are skipped too."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    items, skipped = [], Counter()
    problems = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        name = sub.name
        if name in labels:
            index = labels.index(name)
        elif UNKNOWN in labels:
            index = labels.index(UNKNOWN)
        else:
            skipped[f"label {name!r} not in the model's classes"] += len(list(sub.glob("*.wav")))
            continue
        for wav in sorted(sub.glob("*.wav")):
            try:
                x, rate = load_audio(wav, max_seconds=max_seconds)
                x, _ = fit_full_scale(x)  # beyond full scale (integer PCM stored as float): scaled back, as detect does
            except AudioError as e:
                skipped["unreadable"] += 1
                problems.append(str(e))
                continue
            if rate_range is not None and not rate_range[0] <= rate <= rate_range[1]:
                skipped["rate out of range"] += 1
                problems.append(f"{wav}: recorded at {rate} Hz, outside the rates the model runs at "
                                f"({rate_range[0]:g} to {rate_range[1]:g} Hz; --rates brings files to other rates)")
                continue
            items.append((torch.from_numpy(x), rate, index))
    if not items:
        found = f" ({dict(skipped)})" if skipped else ""
        raise ValueError(f"no <label>/ folders with audio in {folder}{found}: expected e.g. {folder}/yes/*.wav")
    return items, dict(skipped), problems


def merge_results(results: list[RateResult], names: list[str]) -> list[RateResult]:
    """One result per (rate, mode): groups of files at different native rates brought to the same rate are joined."""
    merged: dict[tuple, RateResult] = {}
    for r in results:
        key = (r.rate, r.mode)
        if key not in merged:
            merged[key] = r
            continue
        m = merged[key]
        confusion = (torch.tensor(m.confusion) + torch.tensor(r.confusion)).tolist()
        correct = sum(confusion[i][i] for i in range(len(names)))
        per_class = {name: round(confusion[i][i] / sum(confusion[i]), 4)
                     for i, name in enumerate(names) if sum(confusion[i]) > 0}
        how = m.resample if m.resample == r.resample else "mixed"
        merged[key] = RateResult(m.rate, m.mode, correct / (m.n + r.n), m.n + r.n, how, per_class, confusion)
    return list(merged.values())


def results_table(results: list[RateResult]) -> str:
    lines = [f"{'rate (Hz)':>10}  {'kernel %':>8}  {'input %':>8}  {'n':>6}"]
    by_rate = defaultdict(dict)
    for r in results:
        by_rate[r.rate][r.mode] = r
    for rate in sorted(by_rate):
        row = by_rate[rate]
        cell = lambda m: f"{100 * row[m].accuracy:8.2f}" if m in row else f"{'-':>8}"
        n = next(iter(row.values())).n
        lines.append(f"{rate:>10}  {cell('kernel')}  {cell('input')}  {n:>6}")
    return "\n".join(lines)


def per_class_table(results: list[RateResult], names: list[str]) -> str:
    """Accuracy of each class (rows) at each rate (columns), one block per mode; n: clips of the class."""
    blocks = []
    for mode in MODES:
        rows = sorted((r for r in results if r.mode == mode), key=lambda r: r.rate)
        if not rows:
            continue
        width = max(len(n) for n in names) + 2
        lines = [f"per-class accuracy (%), {mode} mode", f"{'class':<{width}}{'n':>6}" +
                 "".join(f"{r.rate:>8}" for r in rows)]
        for i, name in enumerate(names):
            count = sum(rows[0].confusion[i]) if rows[0].confusion else 0
            cells = "".join(f"{100 * r.per_class[name]:8.1f}" if name in r.per_class else f"{'-':>8}" for r in rows)
            lines.append(f"{name:<{width}}{count:>6}{cells}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def plot_results(results: list[RateResult], path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, style in [("kernel", "o-"), ("input", "s--")]:
        pts = sorted((r.rate, r.accuracy) for r in results if r.mode == mode)
        if pts:
            ax.plot([p[0] / 1000 for p in pts], [100 * p[1] for p in pts], style, label=f"{mode} resampling")
    ax.set_xlabel("sample rate (kHz)")
    ax.set_ylabel("accuracy (%)")
    low, high = ax.get_ylim()  # at least 10 points of axis: a 0.1-point wiggle must not look like a cliff
    middle = (low + high) / 2
    ax.set_ylim(min(low, middle - 5), max(high, middle + 5))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(path, model_dir: str, results: list[RateResult], names: list[str],
               extra: dict | None = None) -> None:
    payload = {
        "model": str(model_dir),
        "results": [{k: v for k, v in r.__dict__.items() if k != "confusion"} for r in results],
        "confusion_axes": "confusion[rate/mode][true class][predicted class] = clips",
        "confusion": {f"{r.rate}/{r.mode}": {true: dict(zip(names, row)) for true, row in zip(names, r.confusion)}
                      for r in results},
        **(extra or {}),
    }
    Path(path).write_text(json.dumps(payload, indent=1) + "\n")


def infer_task(labels: list[str]) -> str:
    from .data.speech_commands import TASKS

    for name, task_labels in TASKS.items():
        if list(labels) == task_labels:
            return name
    raise ValueError(f"the model's labels match no known task; pass --task (labels: {labels[:5]}...)")


def run_evaluation(args, log=print) -> dict:
    """`mrconv-audio evaluate`: see the module docstring."""
    from .data.audio import fit_length
    from .data.cache import load_split
    from .data.speech_commands import SpeechCommands

    model_dir = Path(args.model) if args.model else default_model_dir()
    model = MRConvClassifier.from_pretrained(model_dir).reparameterize().to(pick_device(args.device))
    modes = [args.mode] if args.mode else list(MODES)
    extra: dict = {"modes": modes, "input_resample": args.input_resample}
    low, high = model.rate_range()
    if "kernel" in modes and any(not low <= rate <= high for rate in args.rates or []):
        raise ValueError(f"--rates {' '.join(map(str, args.rates))}: the model runs at {low:g} to {high:g} Hz")
    if args.data_root:
        task = args.task or infer_task(model.labels)
        dataset = SpeechCommands(args.data_root)
        split = load_split(dataset, task, args.split, sample_rate=16000, cache_dir=args.cache_dir, log=log)
        rates = args.rates or DEFAULT_RATES
        waveforms, labels = split.waveforms(np.arange(len(split))), torch.from_numpy(split.labels)
        with progress_bar(len(labels) * len(rates) * len(modes), log) as (bar, say):
            results = evaluate_rates(model, waveforms, labels, 16000, rates, modes, args.input_resample,
                                     args.batch_size, say, bar.update)
        extra.update(data_root=[str(r) for r in args.data_root], split=args.split, task=task,
                     skipped=dataset.skipped + split.skipped)  # files refused while reading the tree, then clips
    else:
        # Without --rates the model runs at each file's own rate (kernel mode): a file it cannot run at is skipped.
        native = model.rate_range() if not args.rates and "kernel" in modes else None
        items, skipped, problems = read_folder(args.folder, model.labels, rate_range=native)
        for problem in problems:
            log(f"skipped {problem}")
        results = []
        groups: dict[int, list] = defaultdict(list)
        for x, rate, index in items:
            groups[rate].append((x, index))
        steps = sum(len(group) * len(args.rates or [native]) for native, group in groups.items()) * len(modes)
        with progress_bar(steps, log) as (bar, say):
            for native, group in sorted(groups.items()):
                targets = args.rates or [native]
                window = round(model.config.clip_seconds * native)
                x = torch.stack([fit_length(w, window) for w, _ in group])
                y = torch.tensor([i for _, i in group])
                results += evaluate_rates(model, x, y, native, targets, modes, args.input_resample, args.batch_size,
                                          say, bar.update)
        results = merge_results(results, model.labels)
        extra.update(folder=str(args.folder), skipped=skipped, problems=problems)
        if skipped:
            log(f"skipped: {skipped}")
    log(results_table(results))
    log("")
    log(per_class_table(results, model.labels))
    if args.json_out:
        write_json(args.json_out, str(model_dir), results, model.labels, extra)
    if args.plot:
        plot_results(results, args.plot, title=f"{model_dir.name}")
    return {"results": results, **extra}


@contextmanager
def progress_bar(total: int, log):
    """A bar of clips classified, on stderr and only on a terminal; yields (bar, log) with log lines that keep
    the bar intact."""
    from tqdm import tqdm

    with tqdm(total=total, desc="evaluate", unit=" clips", leave=False, disable=None, file=sys.stderr) as bar:
        yield bar, (log if bar.disable else lambda line: tqdm.write(str(line), file=sys.stdout))
