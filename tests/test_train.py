import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mrconv_audio import MRConvClassifier
from mrconv_audio.train import TrainConfig, train, warm_start
from speech_tree import make_speech_commands

TINY = {"d_model": 8, "depth": 1, "dropout": 0.1}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_speech_commands(tmp_path_factory.mktemp("data") / "sc", speakers=8)


def tiny_config(tree, out, cache, **overrides):
    values = dict(data_root=str(tree), out=str(out), preset="small", task="kws12", epochs=3, batch_size=4,
                  lr=0.02, warmup_epochs=0.2, sample_rate=4000, cache_dir=str(cache), model_overrides=TINY)
    return TrainConfig(**{**values, **overrides})


def test_training_lowers_the_loss_and_saves_the_best_model(tree, tmp_path):
    out = train(tiny_config(tree, tmp_path / "run", tmp_path / "cache", epochs=4, augment=False), log=lambda *a: None)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[-1]["train_loss"] < 0.9 * metrics[0]["train_loss"]
    assert metrics[-1]["lr"] < metrics[0]["lr"]  # cosine decay
    assert {"val_accuracy", "val_accuracy_2000hz", "lr", "seconds"} <= set(metrics[0])
    best = MRConvClassifier.from_pretrained(out / "best")
    merged = MRConvClassifier.from_pretrained(out / "best-merged")
    assert merged.reparameterized and best.config.sample_rate == 4000
    assert best.labels[-2:] == ["_silence_", "_unknown_"]
    assert best.config.input_std != 0.2  # normalization statistics come from the training split
    x = torch.randn(3, 4000) * 0.1
    torch.testing.assert_close(best(x), merged(x), rtol=1e-4, atol=1e-4)


def test_unreadable_clips_are_skipped_and_listed(tmp_path):
    tree = make_speech_commands(tmp_path / "sc", speakers=4)
    (tree / "yes" / "broken_nohash_0.wav").write_text("not audio")
    out = train(tiny_config(tree, tmp_path / "run", tmp_path / "cache", epochs=1), log=lambda *a: None)
    skipped = json.loads((out / "skipped.json").read_text())
    assert [s["path"] for s in skipped] == [str(tree / "yes" / "broken_nohash_0.wav")]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["skipped_clips"] == 1


def test_an_epoch_logged_but_not_saved_is_logged_once_after_resuming(tree, tmp_path):
    cfg = tiny_config(tree, tmp_path / "run", tmp_path / "cache", epochs=1, augment=False)
    out = train(cfg, log=lambda *a: None)
    with open(out / "metrics.jsonl", "a") as f:  # as if killed after logging epoch 2, before saving its state
        f.write(json.dumps({"epoch": 2, "train_loss": -1.0}) + "\n")
    train(tiny_config(tree, tmp_path / "run", tmp_path / "cache", epochs=2, augment=False), log=lambda *a: None)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[1]["train_loss"] > 0


def test_fine_tuning_starts_from_the_saved_weights(tree, tmp_path):
    first = train(tiny_config(tree, tmp_path / "a", tmp_path / "cache", epochs=3, augment=False), log=lambda *a: None)
    labels = MRConvClassifier.from_pretrained(first / "best").labels
    saved = MRConvClassifier.from_pretrained(first / "best").eval()
    start = warm_start(first / "best", labels, 4000, {"dropout": 0.0}).eval()
    x = torch.randn(2, 4000) * 0.1
    torch.testing.assert_close(start(x), saved(x))
    assert start.config.dropout == 0.0 and start.config.input_std == saved.config.input_std

    second = train(tiny_config(tree, tmp_path / "b", tmp_path / "cache", epochs=1, augment=False,
                               init_from=str(first / "best")), log=lambda *a: None)
    loss = lambda run: json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
    assert loss(second) < loss(first)  # it goes on from where the first run ended, not from a fresh init

    with pytest.raises(ValueError, match="trained at 4000 Hz"):
        warm_start(first / "best", labels, 8000, {})
    with pytest.raises(ValueError, match="labels"):
        warm_start(first / "best", labels[::-1], 4000, {})
    with pytest.raises(ValueError, match="merged"):
        warm_start(first / "best-merged", labels, 4000, {})


def cli_train(tree, out, cache, *extra):
    return [sys.executable, "-m", "mrconv_audio.cli", "train", "--preset", "small", "--task", "kws12",
            "--data-root", str(tree), "--out", str(out), "--epochs", "3", "--batch-size", "4", "--lr", "0.02",
            "--sample-rate", "4000", "--cache-dir", str(cache), "--seed", "7",
            "--set", "d_model=8", "--set", "depth=1", *extra]


def test_killed_run_resumes_to_the_same_weights(tree, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cache = tmp_path / "cache"
    reference = subprocess.run(cli_train(tree, tmp_path / "ref", cache), env=env, capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr

    # Same run, killed with SIGKILL in the middle of its second epoch.
    run = tmp_path / "run"
    proc = subprocess.Popen(cli_train(tree, run, cache, "--checkpoint-every", "3"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "checkpoint saved: epoch 2" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # it died inside epoch 2

    refused = subprocess.run(cli_train(tree, run, cache), env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    resumed = subprocess.run(cli_train(tree, run, cache, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "epoch 2, step" in resumed.stdout

    final, expected = load_file(run / "state.safetensors"), load_file(tmp_path / "ref" / "state.safetensors")
    model_keys = [k for k in expected if k.startswith("model.")]
    assert model_keys
    for key in model_keys:
        assert torch.equal(final[key], expected[key]), key
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    # The resumed epoch's metrics count the whole epoch (the steps before the kill too), as the uninterrupted run's.
    metrics = lambda folder: [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    for got, want in zip(metrics(run), metrics(tmp_path / "ref")):
        assert got["clips"] == want["clips"] and got["train_accuracy"] == want["train_accuracy"], got["epoch"]
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6, abs=0), got["epoch"]


def test_class_weights_make_every_class_count_alike():
    from mrconv_audio.train import class_weights

    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10).numpy()
    weights = class_weights(labels, 4)
    per_class = weights[:3] * torch.tensor([60.0, 30.0, 10.0])
    torch.testing.assert_close(per_class, torch.full((3,), per_class[0].item()))  # each class's total weight alike
    assert weights[3] == 0 and abs(float(weights[labels].mean()) - 1) < 1e-6  # average example weighs 1


def test_training_balances_classes_and_hears_every_unknown_word(tree, tmp_path, monkeypatch):
    import mrconv_audio.train as training

    seen = {}
    real_cross_entropy = training.F.cross_entropy

    def spy(logits, target, weight=None, **kwargs):
        seen["weight"] = weight
        return real_cross_entropy(logits, target, weight=weight, **kwargs)

    monkeypatch.setattr(training.F, "cross_entropy", spy)
    messages = []
    train(tiny_config(tree, tmp_path / "run", tmp_path / "cache", epochs=1), log=messages.append)
    # 8 speakers, 6 train: 60 keyword clips, 12 bed/cat clips (all _unknown_), ceil(10%) = 6 silence segments.
    assert any("78 clips" in m for m in messages)
    weights = seen["weight"]
    assert weights is not None and weights[-1] * 12 == pytest.approx(weights[0] * 6) and weights[-2] == weights[0]


def test_resuming_with_other_settings_names_the_field_instead_of_continuing(tree, tmp_path):
    cfg = lambda **o: tiny_config(tree, tmp_path / "run", tmp_path / "cache", **{"epochs": 1, "augment": False, **o})
    out = train(cfg(), log=lambda *a: None)
    before = (out / "train_config.json").read_text()
    with pytest.raises(ValueError, match="cannot resume with a different 'batch_size': the run was started with 4, "
                                         "this command gives 8"):
        train(cfg(batch_size=8, epochs=2), log=lambda *a: None)
    with pytest.raises(ValueError, match="different 'model_overrides'"):
        train(cfg(model_overrides={**TINY, "d_model": 16}, epochs=2), log=lambda *a: None)
    assert (out / "train_config.json").read_text() == before  # the stored configuration is left as it was
    train(cfg(epochs=2, checkpoint_every=5), log=lambda *a: None)  # more epochs: the same run, continued
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
