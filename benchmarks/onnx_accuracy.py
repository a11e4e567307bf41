"""Accuracy of the exported models beside the PyTorch model, on the same clips (default: the kws12 test split of the
shipped model's two data folders), at each rate: PyTorch merged, onnxruntime float, onnxruntime int8.

    OMP_NUM_THREADS=1 nice python benchmarks/onnx_accuracy.py \
        --data-root ../shared/data/speech_commands_subset --data-root ../shared/data/speech_commands_more \
        --rates 8000 16000 48000 --json models/kws12-mrconv/onnx_evaluation.json

Audio is brought from 16 kHz to each rate as `mrconv-audio evaluate` does (naive decimation to 8 kHz, sinc
elsewhere); each rate gets its own export (`export_onnx` at that rate, int8 from it), except that the shipped files
are used where their rate matches. The last line printed is the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mrconv_audio.data.cache import load_split  # noqa: E402
from mrconv_audio.data.speech_commands import SpeechCommands  # noqa: E402
from mrconv_audio.evaluate import bring_to_rate, default_model_dir, predict  # noqa: E402
from mrconv_audio.export import export_onnx, quantize_int8, weights_digest  # noqa: E402
from mrconv_audio.model import MRConvClassifier  # noqa: E402
from mrconv_audio.onnx_model import INT8_NAME, ONNX_NAME, OnnxModel  # noqa: E402


def onnx_logits(model: OnnxModel, x: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([model.logits(x[i : i + batch]) for i in range(0, len(x), batch)])


def exported_files(model_dir: Path, model, rate: int, work: Path) -> dict[str, Path]:
    """The float and int8 files at `rate`: the shipped ones where they were exported at that rate, else fresh."""
    shipped = {"onnx_float": model_dir / ONNX_NAME, "onnx_int8": model_dir / INT8_NAME}
    if all(p.is_file() and OnnxModel(p).sample_rate == rate for p in shipped.values()):
        return shipped
    out = export_onnx(model, rate, work / f"model-{rate}.onnx", weights_digest(model_dir))
    return {"onnx_float": out, "onnx_int8": quantize_int8(out, work / f"model-{rate}.int8.onnx")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the shipped model)")
    parser.add_argument("--data-root", action="append", required=True)
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    parser.add_argument("--rates", type=int, nargs="+", default=[8000, 16000, 48000])
    parser.add_argument("--cache-dir")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model_dir = Path(args.model or default_model_dir())
    model = MRConvClassifier.from_pretrained(model_dir).reparameterize()
    split = load_split(SpeechCommands(args.data_root), "kws12", args.split, cache_dir=args.cache_dir)
    x16, labels = split.waveforms(np.arange(len(split))), split.labels
    result = {"model": str(model_dir), "split": args.split, "data_root": args.data_root, "clips": len(split),
              "accuracy": {}, "agreement_with_pytorch": {}, "max_relative_logit_error": {}}
    with tempfile.TemporaryDirectory() as work:
        for rate in args.rates:
            x, how = bring_to_rate(x16, 16000, rate, "decimate")
            reference = predict(model, x, sample_rate=rate).numpy()
            rows = {"pytorch": reference}
            for name, path in exported_files(model_dir, model, rate, Path(work)).items():
                rows[name] = onnx_logits(OnnxModel(path), x.numpy())
            for name, logits in rows.items():
                key = f"{rate}/{name}"
                result["accuracy"][key] = round(float((logits.argmax(-1) == labels).mean()), 4)
                agree = (logits.argmax(-1) == reference.argmax(-1)).mean()
                result["agreement_with_pytorch"][key] = round(float(agree), 4)
                error = np.abs(logits - reference).max(-1) / np.abs(reference).max(-1)
                result["max_relative_logit_error"][key] = float(f"{error.max():.3g}")
            line = "  ".join(f"{name} {100 * result['accuracy'][f'{rate}/{name}']:.2f}%" for name in rows)
            print(f"{rate:>6} Hz ({how}): {line}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
