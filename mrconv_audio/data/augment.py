"""Seeded batch augmentation for training: speed perturbation, time shift, background noise at a random SNR, gain.

Two steps, so that the work can run on the GPU while the randomness stays reproducible:
  draw(batch, labels)  every random choice for a batch, from one CPU torch.Generator (checkpointed with the run);
  apply(x, params)     the arithmetic, in batches on whatever device x is on.
Data-parallel training draws for the whole global batch on every process (the generators stay in step) and each
process applies its own rows, so the augmented batch does not depend on the number of processes.
x: (batch, time) float waveforms.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

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

    def to(self, device) -> "Augmenter":
        """Keep the noise recordings on `device` (once), so that mixing needs no copies per batch."""
        if self.noise is not None:
            self.noise = self.noise.to(device)
        return self

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.gen)

    def draw(self, batch: int, labels: torch.Tensor) -> dict:
        """Every random choice for a batch (CPU tensors of `batch` rows), in a fixed order."""
        cfg, params = self.cfg, {}
        if cfg.speed is not None:
            params["speed"] = self._uniform(batch, *cfg.speed)
        if cfg.shift_seconds > 0:
            limit = int(cfg.shift_seconds * self.sample_rate)
            params["shift"] = torch.randint(-limit, limit + 1, (batch,), generator=self.gen)
        if self.noise is not None and cfg.noise_prob > 0:
            params["noise"] = torch.randint(len(self.noise), (batch,), generator=self.gen)
            params["snr_db"] = self._uniform(batch, *cfg.snr_db)
            use = torch.rand(batch, generator=self.gen) < cfg.noise_prob
            if self.silence_label is not None:  # silence clips are noise already: keep them as they are
                use &= labels.cpu() != self.silence_label
            params["use_noise"] = use
        params["gain_db"] = self._uniform(batch, *cfg.gain_db)
        return params

    @staticmethod
    def rows(params: dict, index) -> dict:
        """The parameters of some rows of the batch (this process's share of a global batch)."""
        return {name: value[index] for name, value in params.items()}

    def apply(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        batch, length = x.shape
        p = {name: value.to(x.device, non_blocking=True) for name, value in params.items()}
        if "speed" in p:
            x = self.change_speed(x, p["speed"])
        if "shift" in p:
            source = torch.arange(length, device=x.device)[None, :] - p["shift"][:, None]  # t reads t - shift
            valid = (source >= 0) & (source < length)
            x = torch.where(valid, x.gather(1, source.clamp(0, length - 1)), 0.0)
        if "noise" in p:
            noise = self.noise[p["noise"], :length].to(x.dtype)
            signal_power = x.square().mean(1).clamp_min(1e-8)
            noise_power = noise.square().mean(1).clamp_min(1e-8)
            scale = torch.sqrt(signal_power / (noise_power * 10 ** (p["snr_db"] / 10)))
            x = x + (p["use_noise"] * scale)[:, None] * noise
        gain = 10 ** (p["gain_db"] / 20)
        return (x * gain[:, None]).clamp(-1.0, 1.0)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.draw(len(x), labels))

    @staticmethod
    def change_speed(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """Play each row `factor` times faster (and higher), zero-padded or cut to the same length.

        A band-limited (windowed-sinc) resampler, so a speed-up does not fold energy above the new Nyquist frequency
        back into the band. Factors are rounded to SPEED_STEPS / n for an integer n, which keeps the resampler's
        polyphase filter small (the same few filters serve every batch).
        """
        import torchaudio.functional as AF  # only speed perturbation needs torchaudio

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
