"""Helpers shared by the tests (pytest puts this folder on sys.path)."""
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "app" / "examples"  # real recordings, one per word


def randomize_batchnorms(module: torch.nn.Module) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters, as after training."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.3, 3.0)
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_(0, 0.5)


def spoken_words(words, rate=16000, gap=1.5):
    """The shipped examples of `words`, each after `gap` seconds of silence, then 1 s of silence; and their start
    times."""
    parts, starts = [], []
    for word in words:
        (path,) = EXAMPLES.glob(f"{word}_*.wav")
        x, r = sf.read(path, dtype="float32")
        assert r == rate
        parts += [np.zeros(int(gap * rate), np.float32), x]
        starts.append(sum(len(p) for p in parts[:-1]) / rate)
    return np.concatenate(parts + [np.zeros(rate, np.float32)]), starts
