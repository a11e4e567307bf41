"""Installed like a package: a wheel built from this tree, installed into a venv outside the checkout, finds the
shipped model and the demo's examples. Slow (a wheel build and several start-ups of torch): .ci/run runs it with
`pytest -m slow tests/test_packaging.py`."""
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL_FILES = ["config.json", "model.safetensors", "MODEL_CARD.md", "evaluation.json", "model.onnx", "model.int8.onnx"]

pytestmark = pytest.mark.slow


def source_files() -> list[str]:
    """The files of this tree that git would commit (tracked, or new and not ignored)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    return [name for name in out.splitlines() if (REPO / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know which files make the source tree")
    src = tmp_path_factory.mktemp("src")
    for name in source_files():  # a clean copy: no build/ or egg-info left in the checkout
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)], check=True)
    (path,) = dist.glob("mrconv_audio-*.whl")
    return path


def test_wheel_holds_every_package_the_model_and_the_examples(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    inits = [p for top in ("mrconv_audio", "app") for p in (REPO / top).rglob("__init__.py")]
    # A subpackage missing from pyproject.toml's list would be left out of the wheel.
    for package in {str(p.parent.relative_to(REPO)) for p in inits}:
        assert f"{package}/__init__.py" in names, f"{package} is not in the wheel: add it to pyproject.toml"
    for name in MODEL_FILES:
        assert f"mrconv_audio/shipped/kws12-mrconv/{name}" in names
    examples = {p.name for p in (REPO / "app" / "examples").glob("*.wav")}
    assert examples and {f"app/examples/{e}" for e in examples} <= names


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    # --system-site-packages: torch, gradio and the rest come from this environment; mrconv_audio from the wheel.
    root = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(root)], check=True)
    python = root / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
                   check=True, env=clean_env())
    return root


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def run(venv, *args, cwd) -> str:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          check=True).stdout


def test_installed_wheel_runs_info_and_detect_outside_the_checkout(venv, tmp_path):
    python = venv / "bin" / "python"
    site = run(venv, python, "-c", "import mrconv_audio, app.demo as d; print(mrconv_audio.__file__); "
               "print(d.EXAMPLES)", cwd=tmp_path).splitlines()
    package, examples = Path(site[0]).parent, Path(site[1])
    assert venv in package.parents and venv in examples.parents  # the wheel's code, not the checkout's
    installed = package / "shipped" / "kws12-mrconv"
    for name in MODEL_FILES:  # byte for byte the model of the source tree
        assert (installed / name).read_bytes() == (REPO / "models" / "kws12-mrconv" / name).read_bytes()

    info = run(venv, venv / "bin" / "mrconv-audio", "info", cwd=tmp_path)
    assert info.startswith(f"kws12-mrconv  ({installed})") and "classes (12)" in info and "accuracy:" in info

    (clip,) = examples.glob("yes_*.wav")
    result = json.loads(run(venv, venv / "bin" / "mrconv-audio", "detect", clip, "--json", cwd=tmp_path))
    assert [d["label"] for d in result["detections"]] == ["yes"]


def lite_requirements() -> list[str]:
    """pyproject.toml's `lite` extra: the light runtime's whole dependency list."""
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["lite"]


@pytest.fixture(scope="module")
def lite_venv(wheel, tmp_path_factory):
    """The light install of the README: a venv of its own (no system site packages, so no torch), the `lite` extra's
    packages (from pip's cache, or the package index), then the wheel without its dependencies."""
    root = tmp_path_factory.mktemp("lite") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    python = root / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", *lite_requirements()], check=True, env=clean_env())
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, env=clean_env())
    return root


def test_light_install_without_torch_detects_the_words_of_a_recording(lite_venv, tmp_path):
    import numpy as np
    import soundfile as sf

    python = lite_venv / "bin" / "python"
    missing = subprocess.run([str(python), "-c", "import torch"], cwd=tmp_path, env=clean_env(), capture_output=True)
    assert missing.returncode != 0  # the venv really has no torch
    words = ["yes", "no", "up"]
    parts = [np.zeros(8000, np.float32)]
    for word in words:
        (clip,) = (REPO / "app" / "examples").glob(f"{word}_*.wav")
        x, rate = sf.read(clip, dtype="float32")
        assert rate == 16000
        parts += [x, np.zeros(24000, np.float32)]
    recording = tmp_path / "three-words.wav"
    sf.write(recording, np.concatenate(parts), 16000)
    cli = lite_venv / "bin" / "mrconv-audio"
    result = json.loads(run(lite_venv, cli, "detect", recording, "--json", cwd=tmp_path))
    assert [d["label"] for d in result["detections"]] == words
    times = [d["time"] for d in result["detections"]]
    assert times == sorted(times) and times[-1] < result["duration"]
    assert "--backend" in run(lite_venv, cli, "listen", "--help", cwd=tmp_path)
