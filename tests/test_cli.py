"""The command line as a user meets it: instant help that documents every option, a readable `info`, clear errors,
progress bars only on a terminal."""
import argparse
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import randomize_batchnorms
from mrconv_audio import MRConvClassifier, MRConvConfig
from mrconv_audio import cli
from mrconv_audio.cli import build_parser, main
from mrconv_audio.evaluate import default_model_dir
from tone_model import ToneModel, tone_stream

REPO = Path(__file__).resolve().parents[1]
HEAVY = ["torch", "gradio", "sounddevice"]


def run_cli(args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mrconv_audio.cli", *args], env=env, **kwargs)


@pytest.mark.parametrize("args", [["--help"], ["detect", "--help"], ["evaluate", "--help"], ["demo", "--help"],
                                  ["train", "--help"], ["listen", "--help"]])
def test_help_imports_no_torch_gradio_or_sounddevice(args):
    code = ("import sys\nfrom mrconv_audio.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *args], env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, check=True).stdout
    assert "usage: mrconv-audio" in out
    assert out.strip().splitlines()[-1] == "[]"


def subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in subparsers(sub))


def test_every_option_says_what_it_does_and_its_default():
    checked = 0
    for name, sub in subparsers(build_parser()):
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help text"
            if action.default not in (None, False, []):
                shown = action.default if not isinstance(action.default, list) else action.default[0]
                assert f"default: {shown}" in " ".join(text.split()), f"{name} {action.option_strings}: no default"
            checked += 1
    assert checked > 50


def test_info_summarizes_the_shipped_model_by_default(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    model_dir = default_model_dir()
    config = json.loads((model_dir / "config.json").read_text())["config"]
    evaluation = json.loads((model_dir / "evaluation.json").read_text())
    at_16k = next(r for r in evaluation["results"] if r["rate"] == 16000 and r["mode"] == "kernel")
    assert out.startswith(f"{model_dir.name}  (")
    assert f"classes ({len(config['labels'])}): {', '.join(config['labels'])}" in out
    assert f"trained at {config['sample_rate']} Hz" in out
    assert f"{100 * at_16k['accuracy']:.2f}% at 16000 Hz" in out and f"n={at_16k['n']}" in out
    assert f"weights: {(model_dir / 'model.safetensors').stat().st_size / 1e6:.2f} MB" in out
    assert not out.lstrip().startswith("{")

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["labels"] == config["labels"] and info["parameters"] > info["parameters_merged"] > 0


def test_info_on_a_preset_says_it_is_untrained(capsys):
    assert main(["info", "--preset", "sc35-paper"]) == 0
    out = capsys.readouterr().out
    assert "untrained" in out and "classes (35)" in out and "accuracy" not in out


def test_detect_names_a_missing_file(tmp_path, capsys):
    assert main(["detect", str(tmp_path / "nonexistent.wav")]) == 2
    err = capsys.readouterr().err
    assert "nonexistent.wav: no such file" in err and "System error" not in err


def test_detect_counts_detections_in_words(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "load_model", lambda path, backend="torch": ToneModel())
    for events, expected in [([(1.0, "high", 0.3)], "1 detection\n"),
                             ([(1.0, "high", 0.3), (3.0, "low", 0.3)], "2 detections\n"), ([], "0 detections\n")]:
        sf.write(tmp_path / "a.wav", tone_stream(events, seconds=4.5), 16000)
        assert main(["detect", str(tmp_path / "a.wav")]) == 0
        assert capsys.readouterr().out.splitlines()[0].endswith(expected.strip())


def stderr_of(args, terminal: bool) -> str:
    """stderr of the command line, connected to a pseudo-terminal or to a pipe."""
    if not terminal:
        return run_cli(args, capture_output=True, text=True, check=True).stderr
    main_fd, child_fd = pty.openpty()
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    proc = run_cli(args, stdout=subprocess.DEVNULL, stderr=child_fd)
    os.close(child_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    assert proc.returncode == 0
    return b"".join(chunks).decode(errors="replace")


def test_detect_shows_progress_on_a_terminal_only(tmp_path):
    model = MRConvClassifier(MRConvConfig(d_model=8, depth=1, labels=["yes", "no", "_silence_", "_unknown_"]))
    randomize_batchnorms(model)
    model.eval().save_pretrained(tmp_path / "m")
    sf.write(tmp_path / "a.wav", 0.1 * np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32),
             16000)
    args = ["detect", str(tmp_path / "a.wav"), "--model", str(tmp_path / "m"), "--compute-device", "cpu"]
    assert "detect:" in stderr_of(args, terminal=True) and "%|" in stderr_of(args, terminal=True)
    assert stderr_of(args, terminal=False) == ""


def test_listen_without_portaudio_says_how_to_install_it(tmp_path):
    # sounddevice raises OSError at import when the PortAudio library is missing; stand in for it.
    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    proc = subprocess.run([sys.executable, "-m", "mrconv_audio.cli", "listen", "--list-devices"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "PortAudio library not found" in proc.stderr and "apt-get install libportaudio2" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_evaluate_shows_progress_on_a_terminal_only(tmp_path):
    model = MRConvClassifier(MRConvConfig(d_model=8, depth=1, labels=["yes", "no", "_silence_", "_unknown_"]))
    randomize_batchnorms(model)
    model.eval().save_pretrained(tmp_path / "m")
    for label in ("yes", "no"):
        (tmp_path / "f" / label).mkdir(parents=True)
        sf.write(tmp_path / "f" / label / "a.wav", 0.1 * np.ones(16000, np.float32), 16000)
    args = ["evaluate", "--folder", str(tmp_path / "f"), "--model", str(tmp_path / "m"), "--device", "cpu"]
    assert "evaluate:" in stderr_of(args, terminal=True)
    assert stderr_of(args, terminal=False) == ""
