"""The res8 peer (benchmarks/res8.py) trains through the project's own loop and reads audio at any rate."""
import sys
from pathlib import Path

import torch

from mrconv_audio.train import TrainConfig, train
from speech_tree import make_speech_commands

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from res8 import Res8, build_res8  # noqa: E402


def test_res8_has_the_published_size():
    model = Res8(["yes", "no"] + [f"w{i}" for i in range(10)])
    assert 105_000 < sum(p.numel() for p in model.parameters()) < 115_000  # "110K parameters" (Tang & Lin 2018)


def test_res8_trains_with_the_same_loop_saves_and_runs_at_any_rate(tmp_path):
    tree = make_speech_commands(tmp_path / "sc", speakers=4)
    cfg = TrainConfig(data_root=[str(tree)], out=str(tmp_path / "run"), task="kws12", epochs=1, batch_size=8,
                      cache_dir=str(tmp_path / "cache"))
    out = train(cfg, log=lambda *a: None, build_model=build_res8)
    model = Res8.from_pretrained(out / "best")
    assert model.labels[-2:] == ["_silence_", "_unknown_"] and (out / "metrics.jsonl").is_file()
    x = 0.1 * torch.randn(2, 16000)
    torch.testing.assert_close(model(x), Res8.from_pretrained(out / "best-merged")(x))
    for rate in (8000, 44100, 48000):
        assert model(0.1 * torch.randn(2, rate), sample_rate=rate).shape == (2, 12)


def test_compare_measures_both_models_on_the_same_clips(tmp_path):
    import json

    import compare

    tree = make_speech_commands(tmp_path / "sc", speakers=4)
    cache = str(tmp_path / "cache")
    for name, build in (("mrconv", None), ("res8", build_res8)):
        cfg = TrainConfig(data_root=[str(tree)], out=str(tmp_path / name), preset="logmel", task="kws12", epochs=1,
                          batch_size=8, cache_dir=cache, model_overrides={"d_model": 8, "depth": 1})
        train(cfg, log=lambda *a: None, **({"build_model": build} if build else {}))
    out = tmp_path / "compare.json"
    compare.main(["--mrconv", str(tmp_path / "mrconv/best"), "--peer", str(tmp_path / "res8/best"), "--data-root",
                  str(tree), "--cache-dir", cache, "--rates", "8000", "16000", "48000", "--stream-minutes", "0.1",
                  "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["clips"] == 12 and set(result["latency_ms_per_clip_16khz"]) == {"mrconv", "res8"}
    for name in ("mrconv", "res8"):
        assert set(result[name]["accuracy"]) == {f"{r}/{m}" for r in (8000, 16000, 48000) for m in ("kernel", "input")}
        assert result[name]["stream"]["stream"]["seconds"] >= 6
    assert result["mrconv"]["parameters"] < result["res8"]["parameters"]
