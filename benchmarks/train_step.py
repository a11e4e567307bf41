"""Training throughput (clips/s) and peak memory on the CPU: presets x branch modes, and a naive baseline.

    python benchmarks/train_step.py [--steps 3] [--quick]

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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="the log-mel and small presets only")
    parser.add_argument("--child", nargs=3, metavar=("PRESET", "MODE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        preset, mode, batch = args.child
        print(json.dumps(measure(preset, mode, int(batch), args.steps)))
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


if __name__ == "__main__":
    main()
