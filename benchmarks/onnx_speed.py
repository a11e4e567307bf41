"""Per 1 s clip on one CPU thread, batch 1: onnxruntime (float, each way of exporting the MRConv layers, and int8)
beside the merged PyTorch model, side by side in one process, taking turns so that load hits them alike.

    OMP_NUM_THREADS=1 nice python benchmarks/onnx_speed.py --rates 16000 48000 --json onnx_speed.json

Variants: `onnx_matmul` (the default export: each MRConv layer a per-channel Toeplitz MatMul over the 100 frames),
`onnx_conv` (a depthwise Conv with the 199-tap kernel), `onnx_fft` (rfft, product with the layer's spectrum, irfft:
onnxruntime's DFT), `onnx_int8` (the default export, pointwise layers int8), `pytorch` (MRConvClassifier merged,
FFT convolutions, torch.set_num_threads(1)). Reported: median ms per clip, and each variant's ratio to PyTorch.
The last line printed is the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mrconv_audio.evaluate import default_model_dir  # noqa: E402
from mrconv_audio.export import export_onnx, quantize_int8  # noqa: E402
from mrconv_audio.model import MRConvClassifier  # noqa: E402
from mrconv_audio.onnx_model import OnnxModel  # noqa: E402


def variants(model, rate: int, work: Path) -> tuple[dict, dict]:
    """name -> callable(x (1, samples) float32 numpy), and name -> file size in bytes."""
    runs, sizes = {}, {}
    for mode in ("matmul", "conv", "fft"):
        path = work / f"{rate}-{mode}.onnx"
        export_onnx(model, rate, path, mode=mode)
        runs[f"onnx_{mode}"], sizes[f"onnx_{mode}"] = OnnxModel(path).logits, path.stat().st_size
    int8 = quantize_int8(work / f"{rate}-matmul.onnx", work / f"{rate}-int8.onnx")
    runs["onnx_int8"], sizes["onnx_int8"] = OnnxModel(int8).logits, int8.stat().st_size

    def pytorch(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x), sample_rate=rate)

    runs["pytorch"] = pytorch
    return runs, sizes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: the shipped model)")
    parser.add_argument("--rates", type=int, nargs="+", default=[16000, 48000])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = MRConvClassifier.from_pretrained(args.model or default_model_dir()).reparameterize()
    result = {"threads": 1, "batch": 1, "repeats": args.repeats, "ms_per_clip": {}, "ratio_to_pytorch": {},
              "bytes": {}}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as work:
        for rate in args.rates:
            runs, sizes = variants(model, rate, Path(work))
            x = (0.05 * rng.standard_normal((1, model.max_samples(rate)))).astype(np.float32)
            times = {name: [] for name in runs}
            for run in runs.values():  # warm-up: sessions, caches, allocator
                for _ in range(5):
                    run(x)
            for _ in range(args.repeats):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run(x)
                    times[name].append((time.perf_counter() - start) * 1e3)
            medians = {name: float(np.median(t)) for name, t in times.items()}
            result["ms_per_clip"][str(rate)] = {k: round(v, 3) for k, v in medians.items()}
            result["ratio_to_pytorch"][str(rate)] = {k: round(v / medians["pytorch"], 3) for k, v in medians.items()}
            result["bytes"][str(rate)] = sizes
            print(f"{rate:>6} Hz: " + "  ".join(f"{k} {v:.2f} ms" for k, v in medians.items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
