"""Seeded batch augmentation for training: speed perturbation, time shift, background noise at a random SNR, gain.

All randomness comes from one torch.Generator, so a run is reproducible and can be checkpointed mid-epoch.
x: (batch, time) float waveforms.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio.functional as AF

SPEED_STEPS = 100  # speed factors are SPEED_STEPS / n: 0.90, 0.91, ... steps of about 1%


@dataclass
class AugmentConfig:
    shift_seconds: float = 0.1  # uniform time shift in [-s, s], zero-filled
    noise_prob: float = 0.8  # chance of mixing in a background-noise segment
    snr_db: tuple[float, float] = (0.0, 25.0)
    gain_db: tuple[float, float] = (-10.0, 6.0)
    speed: tuple[float, float] | None = (0.9, 1.1)  # speed (and pitch) factor range; None turns it off


class Augmenter:
    def __init__(self, cfg: AugmentConfig, noise: torch.Tensor | None, sample_rate: int, silence_label: int | None,
                 generator: torch.Generator):
        self.cfg, self.sample_rate, self.silence_label, self.gen = cfg, sample_rate, silence_label, generator
        self.noise = noise if noise is not None and len(noise) else None  # (M, time)

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.gen)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batch, length = x.shape
        cfg = self.cfg
        if cfg.speed is not None:
            x = self.change_speed(x, self._uniform(batch, *cfg.speed))
        if cfg.shift_seconds > 0:
            limit = int(cfg.shift_seconds * self.sample_rate)
            shift = torch.randint(-limit, limit + 1, (batch,), generator=self.gen)
            source = torch.arange(length)[None, :] - shift[:, None]  # output t reads input t - shift
            valid = (source >= 0) & (source < length)
            x = torch.where(valid, x.gather(1, source.clamp(0, length - 1)), 0.0)
        if self.noise is not None and cfg.noise_prob > 0:
            pick = torch.randint(len(self.noise), (batch,), generator=self.gen)
            noise = self.noise[pick, :length]
            snr = self._uniform(batch, *cfg.snr_db)
            signal_power = x.square().mean(1).clamp_min(1e-8)
            noise_power = noise.square().mean(1).clamp_min(1e-8)
            scale = torch.sqrt(signal_power / (noise_power * 10 ** (snr / 10)))
            use = torch.rand(batch, generator=self.gen) < cfg.noise_prob
            if self.silence_label is not None:  # silence clips are noise already: keep them as they are
                use &= labels != self.silence_label
            x = x + (use * scale)[:, None] * noise
        gain = 10 ** (self._uniform(batch, *cfg.gain_db) / 20)
        return (x * gain[:, None]).clamp(-1.0, 1.0)

    @staticmethod
    def change_speed(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """Play each row `factor` times faster (and higher), zero-padded or cut to the same length.

        A band-limited (windowed-sinc) resampler, so a speed-up does not fold energy above the new Nyquist frequency
        back into the band. Factors are rounded to SPEED_STEPS / n for an integer n, which keeps the resampler's
        polyphase filter small (the same few filters serve every batch).
        """
        batch, length = x.shape
        out = torch.zeros_like(x)
        steps = torch.round(SPEED_STEPS / factor).long()
        for n in steps.unique().tolist():
            rows = torch.nonzero(steps == n).flatten()
            # The row read as SPEED_STEPS Hz, rewritten at n Hz; a long Kaiser-windowed sinc for a steep cut-off.
            faster = AF.resample(x[rows], SPEED_STEPS, n, lowpass_filter_width=16, rolloff=0.94,
                                 resampling_method="sinc_interp_kaiser")
            keep = min(length, faster.shape[-1])
            out[rows, :keep] = faster[:, :keep]
        return out
