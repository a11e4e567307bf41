"""Accuracy of a model on real clips with and without the apps' input conditioning (mrconv_audio/conditioning.py),
clean and with the faults it is for: a DC offset, and float audio far beyond full scale. Side by side, one run.

    python benchmarks/conditioning.py --data-root ../shared/data/speech_commands_subset \
        --data-root ../shared/data/speech_commands_more --json conditioning.json

Each clip is classified alone (the demo's short-clip path): conditioned = fit_full_scale, then remove_dc.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mrconv_audio.checkpoint import load_pretrained  # noqa: E402
from mrconv_audio.conditioning import fit_full_scale, remove_dc  # noqa: E402
from mrconv_audio.data.cache import load_split  # noqa: E402
from mrconv_audio.data.speech_commands import SpeechCommands  # noqa: E402
from mrconv_audio.evaluate import default_model_dir, predict  # noqa: E402

FAULTS = {"clean": lambda x: x, "offset +0.3": lambda x: x + 0.3, "offset -0.6": lambda x: x - 0.6,
          "x 32768 (int16 stored as float)": lambda x: x * 32768}


def condition(x: np.ndarray, rate: int) -> np.ndarray:
    return remove_dc(fit_full_scale(x)[0], rate)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--data-root", action="append", required=True)
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_pretrained(args.model or default_model_dir()).eval()
    model.reparameterize()
    split = load_split(SpeechCommands(args.data_root), "kws12", args.split)
    x, y = split.waveforms(np.arange(len(split))).numpy(), torch.from_numpy(split.labels)
    result = {"model": str(args.model or default_model_dir()), "split": args.split, "data_root": args.data_root,
              "clips": len(y), "rate": 16000, "accuracy": {}}
    with torch.no_grad():
        for name, fault in FAULTS.items():
            faulty = fault(x).astype(np.float32)
            conditioned = np.stack([condition(clip, 16000) for clip in faulty])
            row = {}
            for how, audio in (("raw", faulty), ("conditioned", conditioned)):
                logits = predict(model, torch.from_numpy(audio), sample_rate=16000)
                row[how] = round(float((logits.argmax(-1) == y).float().mean()), 4)
            result["accuracy"][name] = row
            print(f"{name:34s} raw {row['raw']:.2%}  conditioned {row['conditioned']:.2%}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
