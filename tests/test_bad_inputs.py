"""The bad-input corpus (bad_inputs.py) through the command line: `evaluate --folder`, `train` and `detect` as
subprocesses. Every run ends with a clear message or a skipped-list entry naming each bad file, never a traceback
or a hang (a FIFO is never opened), and the usable files are used."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from bad_inputs import fifo_guard, make_bad_inputs, tone
from mrconv_audio import MRConvClassifier, MRConvConfig
from mrconv_audio.data.speech_commands import TASKS
from speech_tree import make_speech_commands

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "mrconv_audio.cli", *map(str, args)]


def run_guarded(command, corpus) -> subprocess.CompletedProcess:
    """Run `command` with every FIFO of the corpus guarded; fails if one was opened."""
    fifos = [bad.path for bad in corpus if bad.name == "fifo"]
    with fifo_guard(fifos[0]) as opened:
        result = subprocess.run(command, env=ENV, capture_output=True, text=True, errors="backslashreplace")
    assert not opened, f"{fifos[0]} was opened: {result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    MRConvClassifier(MRConvConfig(d_model=8, depth=1, labels=TASKS["kws12"], sample_rate=16000)).eval() \
        .save_pretrained(path)
    return path


def test_evaluate_folder_lists_every_bad_file_and_evaluates_the_rest(model_dir, tmp_path):
    corpus = make_bad_inputs(tmp_path / "f" / "yes")
    sf.write(tmp_path / "f" / "yes" / "good.wav", tone(16000), 16000)
    out = tmp_path / "eval.json"
    result = run_guarded(cli("evaluate", "--model", model_dir, "--folder", tmp_path / "f", "--json", out), corpus)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    usable = [bad for bad in corpus if bad.usable]
    assert {r["n"] for r in report["results"]} == {1 + len(usable)}  # the good file, the stereo and the loud one
    for bad in corpus:
        named = [p for p in report["problems"] if p.startswith(bad.shown + ":")]
        assert bool(named) != bad.usable, (bad.name, report["problems"])
        assert bad.usable or bad.shown in result.stdout, bad.name  # also said on the terminal
    assert sum(report["skipped"].values()) == len(corpus) - len(usable)


def test_train_lists_every_bad_clip_and_noise_file_and_trains_on_the_rest(tmp_path):
    tree = make_speech_commands(tmp_path / "sc", speakers=4)
    clips = make_bad_inputs(tree / "yes", prefix="bad_", rate=16000)
    noise = make_bad_inputs(tree / "_background_noise_", prefix="noise_", fifo=False)
    out = tmp_path / "run"
    command = cli("train", "--preset", "small", "--task", "kws12", "--data-root", tree, "--out", out, "--epochs", 1,
                  "--batch-size", 4, "--sample-rate", 4000, "--cache-dir", tmp_path / "cache", "--workers", 0,
                  "--set", "d_model=8", "--set", "depth=1")
    result = run_guarded(command, clips)
    assert result.returncode == 0, result.stderr
    skipped = {entry["path"]: entry["reason"] for entry in json.loads((out / "skipped.json").read_text())}
    # Training resamples every clip to its rate: a 200 kHz clip is used, as are stereo ones.
    accepted = lambda bad: bad.usable or bad.rate is not None
    for bad in clips + noise:
        assert (bad.shown in skipped) != accepted(bad), (bad.name, skipped)
        if not accepted(bad):
            assert skipped[bad.shown].startswith(bad.shown), skipped[bad.shown]
    assert f"skipped {len(skipped)} unreadable files" in result.stdout
    metrics = json.loads((out / "metrics.jsonl").read_text())
    assert metrics["skipped_clips"] == len(skipped) and np.isfinite(metrics["train_loss"])


def test_detect_names_every_bad_file_in_one_clear_line(model_dir, tmp_path, capsys):
    from mrconv_audio.cli import main

    corpus = make_bad_inputs(tmp_path / "in")
    (fifo,) = [bad.path for bad in corpus if bad.name == "fifo"]
    for bad in corpus:  # in this process (a subprocess per file costs a torch import each): argv as Python gives it
        with fifo_guard(fifo) as opened:
            code = main(["detect", str(bad.path), "--model", str(model_dir), "--json"])
        out, err = capsys.readouterr()
        assert not opened
        if bad.usable:
            assert code == 0 and json.loads(out)["sample_rate"] == 16000, err
            continue
        assert code == 2, (bad.name, out, err)
        (line,) = err.strip().splitlines()  # one line: no traceback, no library noise
        assert line.startswith("mrconv-audio detect: error: ")
        assert bad.shown in line or (bad.rate and f"{bad.rate} Hz input is out of range" in line), (bad.name, line)
    # And as a real command line, where printing a name that is not UTF-8 would fail.
    (bad,) = [bad for bad in corpus if bad.name == "non_utf8_name"]
    result = run_guarded(cli("detect", bad.path, "--model", model_dir), corpus)
    assert result.returncode == 2 and result.stderr.strip() == (
        f"mrconv-audio detect: error: {bad.shown}: the name is not valid UTF-8 (rename it)")


def test_every_bad_model_folder_is_named_by_from_pretrained_info_and_detect(model_dir, tmp_path, capsys):
    """Model folders broken every way in make_bad_models: from_pretrained raises a CheckpointError (or a missing
    file's OSError) naming the file, and `info` and `detect` end with one line saying so; nothing is allocated for
    the huge sizes (they would exhaust memory), nothing is unpickled."""
    from bad_inputs import make_bad_models
    from mrconv_audio.checkpoint import CheckpointError
    from mrconv_audio.cli import main

    clip = tmp_path / "tone.wav"
    sf.write(clip, tone(16000), 16000)
    corpus = make_bad_models(tmp_path, model_dir)
    assert len(corpus) >= 18
    for bad in corpus:
        with pytest.raises((CheckpointError, OSError)) as raised:
            MRConvClassifier.from_pretrained(bad.path)
        assert bad.names in str(raised.value), (bad.name, raised.value)
        for command in (["info", "--model", str(bad.path)], ["detect", str(clip), "--model", str(bad.path)]):
            code = main(command)
            out, err = capsys.readouterr()
            assert code == 2, (bad.name, command, out, err)
            (line,) = err.strip().splitlines()
            assert line.startswith(f"mrconv-audio {command[0]}: error: ") and bad.names in line, (bad.name, line)


def test_the_demo_api_answers_every_bad_upload_with_its_reason_and_keeps_serving(model_dir, tmp_path):
    """Each corpus file a client can upload (a regular file) through `predict` on a real server: refused with a
    message, or (stereo, far beyond full scale) classified; the server answers a good clip afterwards."""
    from gradio import close_all
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from test_demo import free_port

    from app.demo import launch

    corpus = make_bad_inputs(tmp_path / "in", fifo=False)
    port = free_port()
    launch(MRConvClassifier.from_pretrained(model_dir), str(model_dir), port=port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        tried = 0
        for bad in corpus:
            if not bad.path.is_file() or bad.path.is_symlink() or bad.name == "non_utf8_name":
                continue  # a client uploads a file's bytes: links, folders and names stay on its side
            tried += 1
            if bad.usable:
                result = client.predict(handle_file(str(bad.path)), api_name="/predict")
                assert result["label"] in TASKS["kws12"], (bad.name, result)
                assert ("beyond full scale" in " ".join(result["notes"])) == (bad.name == "huge_amplitude")
                continue
            with pytest.raises(AppError) as refused:
                client.predict(handle_file(str(bad.path)), api_name="/predict")
            message = str(refused.value)
            assert message and "Traceback" not in message, (bad.name, message)
            if bad.rate:
                assert f"{bad.rate} Hz" in message, message
        assert tried >= 8
        good = tmp_path / "tone.wav"
        sf.write(good, tone(16000), 16000)
        assert client.predict(handle_file(str(good)), api_name="/predict")["label"] in TASKS["kws12"]
    finally:
        close_all()
