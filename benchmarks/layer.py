"""One MRConv layer (width 128, 16,000 samples, batch 16) on the CPU: branch form vs merged form vs the FFT floor.

    python benchmarks/layer.py [--batch 16] [--width 128] [--length 16000] [--repeats 5]

Measured twice in one run: first with glibc's default allocator settings, then after
mrconv_audio.cpu.tune_allocator() (what the command-line tools use). The last line is one JSON object;
its top-level figures are the tuned ones (the default), the untuned ones are under "glibc_default".
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from mrconv_audio.cpu import tune_allocator
from mrconv_audio.fftconv import fft_size
from mrconv_audio.mrconv import MRConv


def timed_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def measure(args) -> dict:
    torch.manual_seed(0)
    branch = MRConv(args.width, args.length, 32, "fourier", 16, bidirectional=True, norm="batchnorm").eval()
    merged = MRConv(args.width, args.length, 32, "fourier", 16, bidirectional=True, norm="batchnorm").eval()
    merged.load_state_dict(branch.state_dict())
    merged.reparameterize()
    u = torch.randn(args.batch, args.width, args.length)
    n = fft_size(args.length, args.length)
    with torch.no_grad():
        out = {
            "branch_ms": timed_ms(lambda: branch(u), max(2, args.repeats // 2)),
            "merged_ms": timed_ms(lambda: merged(u), args.repeats),
            "fft_floor_ms": timed_ms(lambda: torch.fft.irfft(torch.fft.rfft(u, n=n), n=n), args.repeats),
        }
        err = ((merged(u) - branch(u)).abs().max() / branch(u).abs().max()).item()
    out["speedup"] = out["branch_ms"] / out["merged_ms"]
    out["merged_over_floor"] = out["merged_ms"] / out["fft_floor_ms"]
    out["merged_vs_branch_rel_err"] = err
    return out


def rounded(d: dict) -> dict:
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in d.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--length", type=int, default=16000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    default = measure(args)
    print("glibc default allocator:", rounded(default))
    tuned_ok = tune_allocator()
    tuned = measure(args)
    print("tuned allocator:        ", rounded(tuned))
    result = {
        **rounded(tuned),
        "allocator_tuned": tuned_ok,
        "allocator_speedup_merged": round(default["merged_ms"] / tuned["merged_ms"], 2),
        "glibc_default": rounded(default),
        "config": {**vars(args), "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "cpu": platform.processor() or platform.machine(), "fft_size": fft_size(args.length, args.length)},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
