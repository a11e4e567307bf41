"""Streaming cost per hop: the engine's path against the earlier one, side by side, with the second core idle and busy.

    python benchmarks/streaming.py [--model DIR] [--hops 100] [--hop 0.1] [--rates 16000 44100 48000] [--json OUT]

The shipped model (or --model), merged, classifying its 1 s window every hop of noise whose level swings, at each
input rate, in kernel mode, with torch at 2 threads (the process's setting). Three paths, run hop by hop in turn so
that they see the same load:
    before       the whole window through the model on the process's 2 threads (the engine until this change)
    one_thread   the whole window through the model on one thread
    engine       the engine's default: one thread, and only the new hop's log-mel frames computed
Twice: with the second core idle (as idle as the machine is: the load average is recorded), and with a
`while True: pass` process keeping it busy. The target: median within 10% of the hop and 99th percentile within 25%. Wall time per hop (what a
listener waits) and the CPU time the process spent on it (the cost, apart from waiting for a core).
The last line is one JSON object (also written to --json).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from mrconv_audio.cpu import tune_allocator
from mrconv_audio.evaluate import default_model_dir
from mrconv_audio.model import MRConvClassifier
from mrconv_audio.streaming import KeywordSpotter, StreamConfig

PATHS = {"before": dict(incremental=False, threads=None), "one_thread": dict(incremental=False, threads=1),
         "engine": dict(incremental=True, threads=1)}
WARM_HOPS = 10  # the first hops build the kernel caches and fill the frame cache


def audio(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    level = 0.01 + 0.2 * np.abs(np.sin(2 * np.pi * 0.7 * t))
    return (level * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)


def measure(model, rate: int, hop: float, hops: int) -> list[dict]:
    spotters = {name: KeywordSpotter(model, rate, StreamConfig(hop_seconds=hop), device="cpu", **kw)
                for name, kw in PATHS.items()}
    step = next(iter(spotters.values())).hop
    x = audio(rate, step * (hops + WARM_HOPS) / rate)
    latency = {name: [] for name in spotters}
    cpu = {name: [] for name in spotters}
    for i in range(hops + WARM_HOPS):
        for name, spotter in spotters.items():  # in turn, hop by hop: the same load for every path
            start = time.process_time()  # CPU time of this process's threads: the cost without the waiting
            (result,) = spotter.push(x[i * step : (i + 1) * step])
            cpu[name].append((time.process_time() - start) * 1000)
            latency[name].append(result.latency_ms)
    rows = []
    for name, values in latency.items():
        lat = np.array(values[WARM_HOPS:])
        median, p99 = float(np.median(lat)), float(np.percentile(lat, 99))
        rows.append({"path": name, "rate": rate, "hop_ms": hop * 1000, "median_ms": round(median, 2),
                     "p99_ms": round(p99, 2), "cpu_median_ms": round(float(np.median(cpu[name][WARM_HOPS:])), 2),
                     "median_of_hop": round(median / (hop * 1000), 4),
                     "p99_of_hop": round(p99 / (hop * 1000), 4),
                     "meets_target": bool(median <= 0.10 * hop * 1000 and p99 <= 0.25 * hop * 1000)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(default_model_dir()))
    parser.add_argument("--hops", type=int, default=100)
    parser.add_argument("--hop", type=float, default=0.1)
    parser.add_argument("--rates", type=int, nargs="+", default=[16000, 44100, 48000])
    parser.add_argument("--json", help="also write the JSON here")
    args = parser.parse_args()
    tune_allocator()
    torch.set_num_threads(2)
    model = MRConvClassifier.from_pretrained(args.model).reparameterize()
    conditions = []
    for second_core in ("idle", "busy"):
        spinner = None
        if second_core == "busy":
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1.0)  # let it take its core
        try:
            load = os.getloadavg()[0]
            rows = []
            for rate in args.rates:
                for row in measure(model, rate, args.hop, args.hops):
                    print({"second_core": second_core, **row}, flush=True)
                    rows.append(row)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
        conditions.append({"second_core": second_core, "load_average_1min_before": round(load, 2), "rows": rows})
    result = {"model": args.model, "threads": torch.get_num_threads(), "cores": os.cpu_count(), "hops": args.hops,
              "conditions": conditions}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
