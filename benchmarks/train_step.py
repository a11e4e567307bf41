"""Training throughput (clips/s) and peak memory on the CPU: presets x branch modes, and a naive baseline.

    python benchmarks/train_step.py [--steps 3] [--quick]
    python benchmarks/train_step.py --pipeline [--rounds 2]   # the input pipeline on the CPU (log-mel preset)
    python benchmarks/train_step.py --processes 1 2           # 1 vs 2 processes (gloo on the CPU, NCCL on GPUs)
    python benchmarks/train_step.py --device cuda              # GPU: bf16 and torch.compile on/off, peak memory

--pipeline times the whole training step on synthetic cached clips with augmentation (noise, shift, gain, speed):
  inline      the loop before the DataLoader: read, convert and augment on the main thread (the old train.py)
  loader-N    train.train_epoch with N DataLoader workers (int16 batches, augmentation applied in batches)
in alternating rounds, each row in its own process; the median round is reported.

Rows (each measured in its own process, so peak memory is that configuration's alone):
  shared   BatchNorm branches, one input FFT shared by all branches (the library's implementation)
  naive    BatchNorm branches, each branch doing its own full FFT convolution (input FFT repeated per branch)
  rescale  rescale-mode branches merged while training: one FFT convolution per layer
The last line is one JSON object with every row and the shared/naive and rescale/shared ratios.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

# preset -> batch size: the paper preset with BatchNorm branches needs ~5 GB per clip at 16 kHz on the CPU; the
# log-mel preset (the shipped model's) trains with batch 32.
PRESETS = {"logmel": 32, "small": 8, "sc35-paper": 2}
MODES = ("shared", "naive", "rescale")


def naive_forward(self, u, rate_ratio):
    """MRConv branch form without the shared input FFT: every branch is an independent FFT convolution."""
    import torch

    from mrconv_audio.fftconv import fft_conv, fft_size, kernel_spectrum

    length = u.shape[-1]
    y = self.D[:, None] * u
    for i, (kernel, norm) in enumerate(zip(self.kernels, self.norms)):
        k = kernel()[..., :length]
        n = fft_size(length, min(self.max_len, length))
        c = fft_conv(torch.fft.rfft(u, n=n), kernel_spectrum(k, n), n, length)
        y = y + self.alpha[i, :, None] * norm(c)
    return y


def measure(preset: str, mode: str, batch: int, steps: int) -> dict:
    """Runs in a child process: a few AdamW steps of `preset` in `mode`."""
    import torch

    from mrconv_audio import MRConvClassifier, MRConvConfig
    from mrconv_audio.cpu import tune_allocator
    from mrconv_audio.mrconv import MRConv

    tune_allocator()
    torch.manual_seed(0)
    cfg = MRConvConfig.preset(preset, branch_norm="rescale" if mode == "rescale" else "batchnorm",
                              labels=[f"c{i}" for i in range(12)])
    if mode == "naive":
        MRConv._forward = naive_forward
    model = MRConvClassifier(cfg).train()
    optimizer = torch.optim.AdamW(model.parameter_groups())
    x, y = torch.randn(batch, round(cfg.sample_rate * cfg.clip_seconds)) * 0.1, torch.randint(0, 12, (batch,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    return {"preset": preset, "mode": mode, "batch": batch, "d_model": cfg.d_model, "depth": cfg.depth,
            "step_s": round(seconds, 3), "clips_per_s": round(batch / seconds, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
            "threads": torch.get_num_threads()}


def measure_loop(spec: dict) -> dict:
    """Runs in a child process (or each process of a torchrun): `spec` says preset, batch, device, loop, workers..."""
    import os
    import tempfile

    import numpy as np
    import torch

    sys.path.insert(0, os.path.dirname(__file__))
    from pipeline import make_model, synthetic_split, time_steps

    from mrconv_audio.cpu import tune_allocator
    from mrconv_audio.data.augment import AugmentConfig, Augmenter
    from mrconv_audio.distributed import setup, shutdown

    tune_allocator()
    world, device = setup(spec.get("device", "cpu"))
    labels = [f"c{i}" for i in range(12)]
    rate, batch, steps = 16000, spec["batch"], spec["steps"]
    augment = spec.get("augment", True)
    if augment and spec.get("speed", True):
        try:
            import torchaudio  # noqa: F401  (speed perturbation's resampler)
        except ImportError:
            spec["speed"] = False
    with tempfile.TemporaryDirectory() as folder:
        split = synthetic_split(f"{folder}/audio.npy", batch * (steps + 2) + 64, rate, len(labels))
        noise = split.waveforms(np.arange(64))
        gen = torch.Generator().manual_seed(1)
        augmenter = Augmenter(AugmentConfig(speed=(0.9, 1.1) if spec.get("speed", True) else None), noise, rate,
                              None, gen).to(device) if augment else None
        model, step_model = make_model(spec["preset"], labels, device, world, spec.get("compile", False))
        amp = spec.get("amp", False) and device.type == "cuda"
        if spec.get("loop") == "inline":
            row = inline_steps(model, split, batch, steps, augmenter)
        else:
            row = time_steps(step_model, model, split, batch, steps, spec.get("warmup", 1), world, device, augmenter,
                             spec.get("workers", 0), amp)
    row = {**spec, **row, "processes": world.size, "device_name": torch.cuda.get_device_name(device)
           if device.type == "cuda" else "cpu", "threads": torch.get_num_threads()}
    shutdown()
    return row if world.main else None


def inline_steps(model, split, batch: int, steps: int, augmenter) -> dict:
    """The training loop as it was before the DataLoader (CPU): index, convert, augment and step on one thread."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from mrconv_audio.train import class_weights

    optimizer = torch.optim.AdamW(model.parameter_groups())
    weights = class_weights(split.labels, int(split.labels.max()) + 1)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(split)))

    def step(i):
        index = order[i * batch : (i + 1) * batch].numpy()
        x, y = split.waveforms(index), torch.from_numpy(split.labels[index])
        if augmenter is not None:
            x = augmenter(x, y)
        loss = F.cross_entropy(model(x).float(), y, weight=weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()

    step(0)
    start = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    seconds = (time.perf_counter() - start) / steps
    return {"step_s": round(seconds, 4), "clips_per_s": round(batch / seconds, 1)}


def run_child(spec: dict, processes: int = 1) -> dict:
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               __file__, "--child-loop", json.dumps(spec)]
    else:
        cmd = [sys.executable, __file__, "--child-loop", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {**spec, "processes": processes, "error": done.stderr.strip().splitlines()[-3:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_rows(rounds: list[list[dict]]) -> list[dict]:
    rows = []
    for per_config in zip(*rounds):
        ok = sorted((r for r in per_config if "clips_per_s" in r), key=lambda r: r["clips_per_s"])
        rows.append({**ok[len(ok) // 2], "rounds_clips_per_s": [r["clips_per_s"] for r in ok]} if ok else per_config[0])
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the log-mel and small presets only")
    parser.add_argument("--pipeline", action="store_true", help="inline loop vs DataLoader with 0 and 2 workers")
    parser.add_argument("--processes", type=int, nargs="+", help="data-parallel processes to compare, e.g. 1 2")
    parser.add_argument("--device", help="cuda: GPU rows (bf16 and torch.compile on and off)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--child", nargs=3, metavar=("PRESET", "MODE", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--child-loop", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        preset, mode, batch = args.child
        print(json.dumps(measure(preset, mode, int(batch), args.steps)))
        return
    if args.child_loop:
        row = measure_loop(json.loads(args.child_loop))
        if row is not None:
            print(json.dumps(row))
        return
    if args.pipeline or args.processes or args.device:
        report = loop_report(args)
        print(json.dumps(report))
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        return

    rows = []
    for preset, batch in PRESETS.items():
        if args.quick and preset == "sc35-paper":
            continue
        for mode in MODES:
            cmd = [sys.executable, __file__, "--steps", str(args.steps), "--child", preset, mode, str(batch)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                row = {"preset": preset, "mode": mode, "error": done.stderr.strip().splitlines()[-1:]}
            else:
                row = json.loads(done.stdout.strip().splitlines()[-1])
            print(row, flush=True)
            rows.append(row)
    ratios = {}
    for preset in PRESETS:
        by_mode = {r["mode"]: r for r in rows if r["preset"] == preset and "clips_per_s" in r}
        if {"shared", "naive"} <= set(by_mode):
            ratios[f"{preset}_shared_over_naive"] = round(by_mode["shared"]["clips_per_s"] / by_mode["naive"]["clips_per_s"], 2)
        if {"shared", "rescale"} <= set(by_mode):
            ratios[f"{preset}_rescale_over_shared"] = round(by_mode["rescale"]["clips_per_s"] / by_mode["shared"]["clips_per_s"], 2)
    print(json.dumps({"rows": rows, "ratios": ratios}))


def loop_report(args) -> dict:
    """--pipeline / --processes / --device rows, side by side in one run."""
    report = {}
    if args.pipeline:  # the shipped model's preset and batch: the loop's overheads show most on a fast step
        configs = [{"loop": "inline"}, {"loop": "loader", "workers": 0}, {"loop": "loader", "workers": 2}]
        rounds = []
        for _ in range(args.rounds):
            rounds.append([run_child({"preset": "logmel", "batch": 32, "steps": args.steps, **c}) for c in configs])
            print(rounds[-1], flush=True)
        rows = median_rows(rounds)
        base = rows[0].get("clips_per_s")
        report["pipeline"] = {"rows": rows, "ratios_over_inline": {
            f"{r['loop']}-{r.get('workers', 0)}": round(r["clips_per_s"] / base, 3) for r in rows[1:]
            if base and "clips_per_s" in r}}
    if args.processes:
        device = args.device or "cpu"
        presets = {"logmel": 32} if device == "cpu" else {"logmel": 32, "sc35-paper": 16}
        rows = [run_child({"preset": preset, "batch": batch, "steps": args.steps, "device": device, "amp": True,
                           "workers": 0 if device == "cpu" else 4}, n)
                for preset, batch in presets.items() for n in args.processes]
        for row in rows:
            print(row, flush=True)
        report["processes"] = rows
    elif args.device:
        rows = []
        for preset, batch in {"sc35-paper": 16, "logmel": 32}.items():
            for amp in (True, False):
                for compile in (False, True):
                    row = run_child({"preset": preset, "batch": batch, "steps": args.steps, "warmup": 3,
                                     "device": args.device, "amp": amp, "compile": compile, "workers": 4})
                    print(row, flush=True)
                    rows.append(row)
        report["device"] = rows
    return report


if __name__ == "__main__":
    main()
