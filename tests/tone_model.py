"""A transparent classifier for streaming tests: it recognises two tones by their share of the window's power.

It has the interface the streaming engine uses (labels, config.sample_rate, config.clip_seconds, max_samples,
forward(x, sample_rate)), so the engine's timing, smoothing and thresholds can be checked against exact
expectations. The engine is also tested with a real MRConvClassifier elsewhere.
"""
import math
from types import SimpleNamespace

import numpy as np
import torch

LOW_HZ, HIGH_HZ = 440.0, 1000.0


class ToneModel(torch.nn.Module):
    labels = ["low", "high", "_silence_", "_unknown_"]

    def __init__(self, delay_s: float = 0.0):
        super().__init__()
        self.config = SimpleNamespace(sample_rate=16000, clip_seconds=1.0)
        self.delay_s = delay_s
        self.calls = 0
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # so .to(device) has something to move

    def max_samples(self, sample_rate=None):
        return round((sample_rate or 16000) * self.config.clip_seconds)

    def forward(self, x, sample_rate=None):
        import time

        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        rate = sample_rate or 16000
        power = torch.fft.rfft(x.double()).abs().square()
        freqs = torch.fft.rfftfreq(x.shape[-1], 1 / rate)
        band = lambda f: power[:, (freqs - f).abs() < 30].sum(-1)
        total = power.sum(-1) + 1e-12
        low, high = band(LOW_HZ) / total, band(HIGH_HZ) / total
        rest = (1 - low - high).clamp_min(0)
        return torch.log(torch.stack([low, high, 0.5 * rest, 0.1 * rest], -1) + 1e-9).float()


def tone_stream(events, seconds: float, rate: int = 16000, tone_seconds: float = 0.4, noise=0.003, seed=0):
    """Background noise with tones: events = [(start_s, "low"|"high", amplitude)]."""
    rng = np.random.default_rng(seed)
    x = noise * rng.standard_normal(int(seconds * rate))
    t = np.arange(int(tone_seconds * rate)) / rate
    ramp = np.minimum(1, np.minimum(t, tone_seconds - t) / 0.02)
    for start, label, amplitude in events:
        f = LOW_HZ if label == "low" else HIGH_HZ
        i = int(start * rate)
        x[i : i + len(t)] += amplitude * ramp * np.sin(2 * math.pi * f * t)
    return x.astype(np.float32)
