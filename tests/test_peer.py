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
