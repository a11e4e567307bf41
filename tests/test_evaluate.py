import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import randomize_batchnorms
from mrconv_audio import MRConvClassifier, MRConvConfig
from mrconv_audio.cli import main
from mrconv_audio.evaluate import bring_to_rate, score
from speech_tree import KEYWORDS, make_speech_commands

LABELS = KEYWORDS + ["_silence_", "_unknown_"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    model = MRConvClassifier(MRConvConfig(d_model=8, depth=1, labels=LABELS, sample_rate=16000))
    randomize_batchnorms(model)
    model.eval().save_pretrained(path)
    return path


def test_bring_to_rate_decimates_only_integer_factors():
    x = torch.randn(2, 16000)
    y, how = bring_to_rate(x, 16000, 8000, "decimate")
    assert how == "decimate" and torch.equal(y, x[:, ::2])
    y, how = bring_to_rate(x, 16000, 11025, "decimate")
    assert how == "sinc" and y.shape == (2, 11025)
    assert bring_to_rate(x, 16000, 16000, "sinc")[1] == "none"


def test_score_counts_per_class_and_confusion():
    logits = torch.tensor([[2.0, 0, 0], [0, 3, 0], [0, 3, 0], [0, 0, 1]])
    acc, per_class, confusion = score(logits, torch.tensor([0, 1, 2, 2]), ["a", "b", "c"])
    assert acc == 0.75 and per_class == {"a": 1.0, "b": 1.0, "c": 0.5}
    assert confusion[2] == [0, 1, 1]


def test_evaluate_cli_writes_json_table_and_plot(model_dir, tmp_path, capsys):
    tree = make_speech_commands(tmp_path / "sc", speakers=4)
    out, plot = tmp_path / "eval.json", tmp_path / "eval.png"
    rc = main(["evaluate", "--model", str(model_dir), "--data-root", str(tree), "--split", "test",
               "--rates", "8000", "16000", "44100", "--json", str(out), "--plot", str(plot),
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["task"] == "kws12" and result["split"] == "test"
    rows = {(r["rate"], r["mode"]): r for r in result["results"]}
    assert set(rows) == {(r, m) for r in (8000, 16000, 44100) for m in ("kernel", "input")}
    assert all(r["n"] == rows[(16000, "kernel")]["n"] > 10 for r in rows.values())
    assert rows[(8000, "kernel")]["resample"] == "decimate" and rows[(44100, "input")]["resample"] == "sinc"
    # At the model's own rate both modes are the same computation.
    assert rows[(16000, "kernel")]["accuracy"] == rows[(16000, "input")]["accuracy"]
    # The confusion matrices name their rows (true class) and columns (predicted class).
    confusion = result["confusion"]["16000/kernel"]
    assert list(confusion) == LABELS and all(list(row) == LABELS for row in confusion.values())
    assert sum(sum(row.values()) for row in confusion.values()) == rows[(16000, "kernel")]["n"]
    for label, accuracy in rows[(16000, "kernel")]["per_class"].items():
        assert confusion[label][label] / sum(confusion[label].values()) == pytest.approx(accuracy, abs=1e-4)
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "rate (Hz)" in out and "n=" not in out and "audio none" not in out
    # The per-class table: a row per class with its clip count and its accuracy at each rate, in percent.
    table = out[out.index("per-class accuracy (%), kernel mode"):].splitlines()
    assert table[1].split() == ["class", "n", "8000", "16000", "44100"]
    by_class = {line.split()[0]: line.split()[1:] for line in table[2:14]}
    assert list(by_class) == LABELS
    for label in LABELS:
        count, *cells = by_class[label]
        assert int(count) == sum(confusion[label].values())
        expected = rows[(16000, "kernel")]["per_class"].get(label)
        assert cells[1] == (f"{100 * expected:.1f}" if expected is not None else "-")


def test_evaluate_folder_at_native_rates_maps_unknown_words(model_dir, tmp_path):
    rng = np.random.default_rng(0)
    for label, rate in [("yes", 16000), ("no", 48000), ("banana", 22050)]:
        (tmp_path / "f" / label).mkdir(parents=True)
        sf.write(tmp_path / "f" / label / "a.wav", 0.1 * rng.standard_normal(rate).astype(np.float32), rate)
    (tmp_path / "f" / "yes" / "bad.wav").write_text("not audio")
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(model_dir), "--folder", str(tmp_path / "f"), "--mode", "kernel",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert sorted(r["rate"] for r in result["results"]) == [16000, 22050, 48000]
    assert result["skipped"] == {"unreadable": 1}
    assert "bad.wav" in result["problems"][0]


def test_evaluate_folder_skips_and_lists_a_file_at_a_rate_the_model_cannot_run_at(model_dir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "f" / "yes").mkdir(parents=True)
    for name, rate in [("a.wav", 16000), ("b.wav", 200_000), ("c.wav", 22050)]:
        sf.write(tmp_path / "f" / "yes" / name, 0.1 * rng.standard_normal(rate).astype(np.float32), rate)
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(model_dir), "--folder", str(tmp_path / "f"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert sorted({r["rate"] for r in result["results"]}) == [16000, 22050]
    assert all(r["n"] == 1 for r in result["results"])
    assert result["skipped"] == {"rate out of range": 1}
    (problem,) = result["problems"]
    assert problem.startswith(f"{tmp_path / 'f' / 'yes' / 'b.wav'}: recorded at 200000 Hz") and "2000 to 192000" in problem
    assert problem in capsys.readouterr().out
    # Brought to rates the model runs at (--rates), the same file is evaluated.
    assert main(["evaluate", "--model", str(model_dir), "--folder", str(tmp_path / "f"), "--rates", "16000",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["results"][0]["n"] == 3
    assert main(["evaluate", "--model", str(model_dir), "--folder", str(tmp_path / "f"), "--rates", "300000"]) == 2
    assert "--rates 300000: the model runs at 2000 to 192000 Hz" in capsys.readouterr().err


def test_evaluate_folder_without_label_folders_fails(model_dir, tmp_path, capsys):
    (tmp_path / "f" / "notes").mkdir(parents=True)
    (tmp_path / "f" / "notes" / "todo.txt").write_text("not audio")
    sf.write(tmp_path / "f" / "loose.wav", np.zeros(16000, np.float32), 16000)  # not in a <label>/ folder
    assert main(["evaluate", "--model", str(model_dir), "--folder", str(tmp_path / "f")]) == 2
    assert f"no <label>/ folders with audio in {tmp_path / 'f'}" in capsys.readouterr().err


def test_evaluate_folder_joins_files_of_several_rates_at_one_rate(model_dir, tmp_path):
    rng = np.random.default_rng(1)
    for label, rate in [("yes", 16000), ("yes", 48000), ("no", 22050)]:
        (tmp_path / "f" / label).mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "f" / label / f"{rate}.wav", 0.1 * rng.standard_normal(rate).astype(np.float32), rate)
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(model_dir), "--folder", str(tmp_path / "f"), "--rates", "16000",
                 "--mode", "kernel", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["results"]  # three files at three native rates: one row at 16 kHz over all of them
    assert row["n"] == 3 and row["resample"] == "mixed"
    confusion = result["confusion"]["16000/kernel"]
    assert sum(confusion["yes"].values()) == 2 and sum(confusion["no"].values()) == 1


def test_evaluate_reports_a_missing_model_cleanly(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "none"), "--folder", str(tmp_path)]) == 2
    assert "no such model folder" in capsys.readouterr().err


def test_evaluate_cli_joins_several_roots(model_dir, tmp_path):
    a = make_speech_commands(tmp_path / "a", speakers=3)
    b = make_speech_commands(tmp_path / "b", speakers=3, suffix=".flac", first_speaker=7, noise_files=0, seed=1)
    counts = {}
    for name, roots in (("a", [a]), ("b", [b]), ("ab", [a, b])):
        out = tmp_path / f"{name}.json"
        args = [arg for root in roots for arg in ("--data-root", str(root))]
        assert main(["evaluate", "--model", str(model_dir), *args, "--split", "test", "--rates", "16000",
                     "--mode", "kernel", "--json", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
        result = json.loads(out.read_text())
        assert result["data_root"] == [str(root) for root in roots]
        counts[name] = result["results"][0]["n"]
    # b has no noise of its own: the joined test split has a's silence, and b's words and unknown words too.
    assert counts["ab"] > counts["a"] and counts["ab"] > counts["b"]


def test_non_finite_scores_are_refused_not_counted_as_predictions():
    from mrconv_audio.evaluate import predict
    from mrconv_audio.streaming import NonFiniteScores

    model = MRConvClassifier(MRConvConfig(d_model=8, depth=1, labels=KEYWORDS[:2] + ["_silence_", "_unknown_"]))
    model.eval()
    x = 0.1 * torch.randn(5, 16000)
    assert predict(model, x).shape == (5, 4)
    with torch.no_grad():
        model.decoder.weight[1, 0] = float("inf")  # one class's score: inf or NaN on every clip
    with pytest.raises(NonFiniteScores, match="non-finite scores .* for 5 of 5 clips at 16000 Hz"):
        predict(model, x)


def test_evaluate_data_root_lists_files_refused_while_reading_the_tree(model_dir, tmp_path):
    from bad_inputs import fifo_guard

    tree = make_speech_commands(tmp_path / "sc", speakers=3)
    os.mkfifo(tree / "_background_noise_" / "pipe.wav")
    (tree / "yes" / "00000001_nohash_9.wav").write_bytes(b"not audio")  # a test-split clip (speaker 1), unreadable
    with open(tree / "testing_list.txt", "a") as f:
        f.write("yes/00000001_nohash_9.wav\n")
    out = tmp_path / "eval.json"
    with fifo_guard(tree / "_background_noise_" / "pipe.wav") as opened:
        assert main(["evaluate", "--model", str(model_dir), "--data-root", str(tree), "--split", "test", "--rates",
                     "16000", "--mode", "kernel", "--json", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert not opened
    skipped = {s["path"]: s["reason"] for s in json.loads(out.read_text())["skipped"]}
    assert set(skipped) == {str(tree / "_background_noise_" / "pipe.wav"), str(tree / "yes" / "00000001_nohash_9.wav")}
    assert "not a regular file (a FIFO)" in skipped[str(tree / "_background_noise_" / "pipe.wav")]
