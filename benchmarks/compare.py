"""MRConv and its peer side by side, measured in one run and the same way.

    python benchmarks/compare.py --mrconv models/kws12-mrconv --peer benchmarks/peers/res8-kws12 \
        --data-root ../shared/data/speech_commands_subset --data-root ../shared/data/speech_commands_more \
        --json compare.json [--stream-minutes M]

For each model, on the same split (default: test) of the same roots:
- accuracy at 8 to 48 kHz, audio brought there by naive decimation where the factor is an integer (8 kHz) and by
  sinc resampling elsewhere; "kernel" mode runs the model at that rate, "input" mode resamples back to 16 kHz first;
- per-class accuracy at 16 kHz (`_unknown_` recall among them);
- latency per 1 s clip at 16 kHz, one thread, batch 1, merged model: median over interleaved runs;
- the stream evaluation (false accepts per hour, miss rate) on one stream both models hear.
The last line printed is the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mrconv_audio.cpu import tune_allocator  # noqa: E402
from mrconv_audio.data.cache import load_split  # noqa: E402
from mrconv_audio.data.speech_commands import SpeechCommands  # noqa: E402
from mrconv_audio.evaluate import DEFAULT_RATES, evaluate_rates  # noqa: E402
from mrconv_audio.model import MRConvClassifier  # noqa: E402
from mrconv_audio.stream_eval import build_stream, evaluate_stream  # noqa: E402
from mrconv_audio.streaming import StreamConfig  # noqa: E402


def load(directory):
    if json.loads((Path(directory) / "config.json").read_text()).get("format") == "res8-peer":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from res8 import Res8

        return Res8.from_pretrained(directory)
    return MRConvClassifier.from_pretrained(directory).reparameterize()


def latency_ms(models: dict, repeats: int = 200) -> dict:
    """Median milliseconds per 1 s clip at 16 kHz, batch 1, the models taking turns (so load hits both alike)."""
    clip = 0.05 * torch.randn(1, 16000)
    times = {name: [] for name in models}
    with torch.inference_mode():
        for name, model in models.items():  # warm-up: caches, allocator
            for _ in range(5):
                model(clip)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(clip)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: round(float(np.median(t)), 2) for name, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mrconv", required=True, help="MRConv model folder")
    parser.add_argument("--peer", required=True, help="res8 model folder (benchmarks/res8.py train ... /best)")
    parser.add_argument("--data-root", action="append", required=True)
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    parser.add_argument("--rates", type=int, nargs="+", default=DEFAULT_RATES)
    parser.add_argument("--stream-minutes", type=float, help="stream length (default: every clip of the split once)")
    parser.add_argument("--no-stream", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    tune_allocator()
    torch.set_num_threads(args.threads)
    models = {"mrconv": load(args.mrconv), "res8": load(args.peer)}
    if models["mrconv"].labels != models["res8"].labels:
        parser.error("the two models have different classes")
    data = SpeechCommands(args.data_root)
    split = load_split(data, "kws12", args.split, cache_dir=args.cache_dir)
    x, y = split.waveforms(np.arange(len(split))), torch.from_numpy(split.labels)
    result = {"split": args.split, "data_root": args.data_root, "clips": len(split), "threads": args.threads,
              "models": {"mrconv": args.mrconv, "res8": args.peer}}
    result["latency_ms_per_clip_16khz"] = latency_ms(models)
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        rows = evaluate_rates(model, x, y, 16000, args.rates, ("kernel", "input"), "decimate")
        accuracy = {f"{r.rate}/{r.mode}": round(r.accuracy, 4) for r in rows}
        per_class = next((r.per_class for r in rows if r.rate == 16000 and r.mode == "kernel"), {})
        result[name] = {"parameters": params, "accuracy": accuracy, "per_class_16khz": per_class}
    if not args.no_stream:
        # Every unknown-word clip of the split, not only the 10% of the accuracy split: what a live spotter hears
        # most is speech that is not a keyword.
        stream_split = load_split(data, "kws12", args.split, cache_dir=args.cache_dir, unknown_fraction=None)
        stream = build_stream(stream_split, seed=0, minutes=args.stream_minutes)
        for name, model in models.items():
            report = evaluate_stream(model, stream, StreamConfig(), device="cpu")
            result[name]["stream"] = report.to_dict()
    for name in models:
        kernel_mode = "  ".join(f"{rate / 1000:g} kHz {result[name]['accuracy'][f'{rate}/kernel']:.4f}"
                                for rate in args.rates)
        print(f"{name:7s} {result[name]['parameters']:>7,} params  {kernel_mode}  unknown recall "
              f"{result[name]['per_class_16khz'].get('_unknown_')}  latency "
              f"{result['latency_ms_per_clip_16khz'][name]} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
