"""The light install (README, "Light runtime"): its size, and the start-up of `listen --help` and `detect`, beside
the full install (this environment, PyTorch backend), in one run.

    nice python benchmarks/lite_install.py --json lite_install.json

Builds a wheel of this tree, makes a venv of its own (no system site packages: no torch), installs pyproject.toml's
`lite` extra and the wheel with --no-deps, then times each command `--runs` times in each install, taking turns
(median wall time of the whole process: interpreter start, imports, model load, and for detect the 1 s example
clip). Sizes: the lite venv on disk, and in this environment the packages the full install adds (torch, its CUDA
libraries, triton, torchaudio, gradio, matplotlib). The last line printed is the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FULL_ONLY = ("torch", "nvidia", "triton", "torchaudio", "gradio", "matplotlib", "cuda")


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def build_lite_venv(work: Path) -> Path:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    src = work / "src"  # a clean copy of the files git would commit: no build/ left in (or taken from) the checkout
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in names:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"), str(src)],
                   check=True, env=env)
    (wheel,) = (work / "dist").glob("mrconv_audio-*.whl")
    root = work / "lite"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    python = root / "bin" / "python"
    lite = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["lite"]
    subprocess.run([str(python), "-m", "pip", "install", "-q", *lite], check=True, env=env)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, env=env)
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    (clip,) = (REPO / "app" / "examples").glob("yes_*.wav")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        venv = build_lite_venv(work)
        site = Path(sysconfig.get_paths()["purelib"])
        full_only = {p.name: du(p) for p in site.iterdir() if p.is_dir() and p.name.lower().startswith(FULL_ONLY)}
        installs = {  # the same module entry point in both; the lite one from its venv, outside the checkout
            "lite (onnxruntime)": ([str(venv / "bin" / "python"), "-m", "mrconv_audio.cli"],
                                   {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}),
            "full (torch)": ([sys.executable, "-m", "mrconv_audio.cli"], {**os.environ, "PYTHONPATH": str(REPO)}),
        }
        commands = {"listen --help": ["listen", "--help"], "detect": ["detect", str(clip), "--json"]}
        times = {(i, c): [] for i in installs for c in commands}
        for _ in range(args.runs):
            for install, (prefix, env) in installs.items():
                for command, rest in commands.items():
                    start = time.perf_counter()
                    out = subprocess.run(prefix + rest, cwd=work, env=env, capture_output=True, text=True)
                    times[(install, command)].append(time.perf_counter() - start)
                    if out.returncode != 0:
                        raise RuntimeError(f"{install}: {command} failed: {out.stderr[-2000:]}")
        lite_site = next((venv / "lib").glob("python*/site-packages"))
        lite_packages = {p.name: du(p) for p in lite_site.iterdir() if p.is_dir() and not p.name.endswith("-info")}
        result = {
            "lite_venv_bytes": du(venv),
            "lite_packages": dict(sorted(lite_packages.items(), key=lambda kv: -kv[1])[:10]),
            "full_install_extra_bytes": sum(full_only.values()),
            "full_install_extra_packages": dict(sorted(full_only.items(), key=lambda kv: -kv[1])[:12]),
            "startup_seconds_median": {f"{i}: {c}": round(float(np.median(t)), 3) for (i, c), t in times.items()},
            "runs": args.runs,
        }
    print(f"lite venv {result['lite_venv_bytes'] / 1e6:.0f} MB; the full install adds "
          f"{result['full_install_extra_bytes'] / 1e9:.2f} GB (torch, CUDA libraries, gradio, ...)")
    for key, value in result["startup_seconds_median"].items():
        print(f"  {key}: {value:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
