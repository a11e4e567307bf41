"""Streaming latency: per-hop processing time (median, 99th percentile) and real-time factor of the engine.

    python benchmarks/streaming.py [--model DIR] [--hops 100] [--hop 0.1]

For each device (CPU, and CUDA when present), input rate (16 and 48 kHz) and mode (kernel: the model runs at the
input's rate; input: the audio is resampled to the model's rate): the shipped model (or --model), merged,
classifying a 1 s window every hop. The budget for 2 CPU cores: a hop's processing under 25% of the hop
length. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from mrconv_audio.cpu import tune_allocator
from mrconv_audio.evaluate import default_model_dir
from mrconv_audio.model import MRConvClassifier
from mrconv_audio.streaming import KeywordSpotter, StreamConfig


def measure(model_dir, device: str, rate: int, hop: float, hops: int, mode: str) -> dict:
    model = MRConvClassifier.from_pretrained(model_dir).reparameterize()
    spotter = KeywordSpotter(model, rate, StreamConfig(hop_seconds=hop, mode=mode), device=device)
    audio = (0.05 * np.random.default_rng(0).standard_normal(spotter.hop * (hops + 5))).astype(np.float32)
    latencies = []
    for i in range(hops + 5):
        for result in spotter.push(audio[i * spotter.hop : (i + 1) * spotter.hop]):
            latencies.append(result.latency_ms)
    lat = np.array(latencies[5:])  # the first hops build the kernel cache
    return {"device": device, "rate": rate, "mode": mode, "hop_ms": hop * 1000, "median_ms": round(float(np.median(lat)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "real_time_factor": round(float(np.median(lat)) / (hop * 1000), 4),
            "within_25pct_budget": bool(np.percentile(lat, 99) < 0.25 * hop * 1000)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(default_model_dir()))
    parser.add_argument("--hops", type=int, default=100)
    parser.add_argument("--hop", type=float, default=0.1)
    args = parser.parse_args()
    tune_allocator()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for rate in (16000, 48000):
            for mode in ("kernel", "input"):
                row = measure(args.model, device, rate, args.hop, args.hops, mode)
                print(row, flush=True)
                rows.append(row)
    print(json.dumps({"model": args.model, "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
