"""Every GPU check in one command, on a CUDA machine with nothing prepared (torch and numpy; no network, soundfile,
gradio or sounddevice needed), written to one JSON report:

    python benchmarks/gpu_check.py [--out gpu_check.json] [--quick]

  1. the tests marked `gpu` (tests/test_gpu.py; through pytest when it is installed, else called directly),
  2. training throughput: sc35-paper and the shipped model's preset (logmel), bf16 autocast on/off, torch.compile
     on/off, peak GPU memory (benchmarks/train_step.py --device cuda),
  3. 1 vs 2 processes when there are 2+ GPUs (benchmarks/train_step.py --processes 1 2 --device cuda),
  4. the full-size dry run of sc35-paper at 16 kHz: seconds per epoch, hours for the 40-epoch run (dry_run.py).
Each part runs in its own process and its failure is recorded, not fatal.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def run_json(cmd: list[str], timeout: float) -> dict:
    """Run a benchmark that prints one JSON object on its last line (and --out FILE)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out.json"
        start = time.time()
        try:
            done = subprocess.run(cmd + ["--out", str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s", "command": " ".join(cmd)}
        result = {"command": " ".join(cmd), "seconds": round(time.time() - start, 1)}
        if done.returncode != 0 or not out.exists():
            return {**result, "error": (done.stderr or done.stdout).strip().splitlines()[-8:]}
        return {**result, **json.loads(out.read_text())}


def gpu_tests() -> dict:
    """pytest -m gpu when pytest is there; otherwise each test function called, failures recorded."""
    try:
        import pytest  # noqa: F401
    except ImportError:
        pytest = None
    if pytest is not None:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                               "tests/test_gpu.py"], cwd=ROOT, env=ENV, capture_output=True, text=True)
        return {"runner": "pytest", "returncode": done.returncode, "summary": done.stdout.strip().splitlines()[-15:]}
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    module = importlib.import_module("test_gpu")
    results = {}
    for name, test in inspect.getmembers(module, inspect.isfunction):
        if name.startswith("test_"):
            try:
                test()
                results[name] = "passed"
            except Exception:
                results[name] = "failed: " + traceback.format_exc(limit=3)
    return {"runner": "direct", "results": results,
            "returncode": int(any(r != "passed" for r in results.values()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--quick", action="store_true", help="fewer timed steps; dry run of 300 steps, extrapolated")
    args = parser.parse_args()

    import torch

    report = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        report["error"] = "no CUDA device: nothing to check"
    else:
        report["device"] = torch.cuda.get_device_name(0)
        report["gpus"] = torch.cuda.device_count()
        missing = []
        for name in ("torchaudio", "safetensors", "tqdm", "pytest", "soundfile"):
            try:
                importlib.import_module(name)
            except ImportError:
                missing.append(name)
        report["modules_missing"] = missing
        report["gpu_tests"] = gpu_tests()
        steps = ["--steps", "10" if args.quick else "30"]
        report["train_step"] = run_json([sys.executable, "benchmarks/train_step.py", "--device", "cuda", *steps], 1800)
        if torch.cuda.device_count() >= 2:
            report["processes"] = run_json([sys.executable, "benchmarks/train_step.py", "--device", "cuda",
                                            "--processes", "1", "2", *steps], 1800)
        dry = ["--steps", "300"] if args.quick else []
        report["dry_run"] = run_json([sys.executable, "benchmarks/dry_run.py", *dry], 3600)
        report["dry_run_compiled"] = run_json([sys.executable, "benchmarks/dry_run.py", "--compile", "--steps", "300"],
                                              3600)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
