"""Input conditioning: DC removal and full scale (mrconv_audio/conditioning.py)."""
import math

import numpy as np
import pytest

from mrconv_audio.conditioning import DCBlocker, fit_full_scale, remove_dc


def reference_high_pass(x, rate, cutoff=10.0, start=None):
    """The DC blocker's recursion, one sample at a time: y[n] = x[n] - m[n], m[n] = a m[n-1] + (1 - a) x[n-1]."""
    a = math.exp(-2 * math.pi * cutoff / rate)
    m = prev = start
    y = np.empty(len(x))
    for n, v in enumerate(x.astype(np.float64)):
        if n:
            m = a * m + (1 - a) * prev
        y[n] = v - m
        prev = v
    return y


@pytest.mark.parametrize("rate", [100, 4000, 16000, 48000])
def test_blocker_is_the_recursion_whatever_the_blocks(rate):
    rng = np.random.default_rng(rate)
    x = (0.3 + 0.1 * rng.standard_normal(max(3 * rate, 5000) + 17)).astype(np.float32)
    blocker = DCBlocker(rate)
    want = reference_high_pass(x, rate, start=float(x[0]))
    whole = remove_dc(x, rate)
    np.testing.assert_allclose(whole, want, atol=2e-6)
    cuts = np.sort(rng.choice(np.arange(1, len(x)), 25, replace=False))
    pieces = [blocker(part) for part in np.split(x, cuts)]
    np.testing.assert_allclose(np.concatenate(pieces), whole, atol=2e-6)


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_constant_offset_is_gone_from_the_first_sample_and_speech_band_passes(rate):
    t = np.arange(2 * rate) / rate
    tone = 0.25 * np.sin(2 * np.pi * 200 * t)
    y = remove_dc((tone + 0.4).astype(np.float32), rate)
    assert abs(float(np.mean(y[rate:]))) < 1e-3  # offset removed
    assert abs(float(y[0])) < 0.3  # no 0.4 step at the start
    # 200 Hz, well above the 10 Hz corner: the one-pole's gain |1 - z^-1| / |1 - a z^-1| there, within 0.3%
    a, z = math.exp(-2 * math.pi * 10 / rate), np.exp(-2j * np.pi * 200 / rate)
    gain = np.sqrt(2) * float(np.std(y[rate:])) / 0.25
    assert gain == pytest.approx(abs(1 - z) / abs(1 - a * z), abs=1e-3)
    assert abs(gain - 1) < 3e-3
    only_dc = remove_dc(np.full(rate, -0.7, np.float32), rate)
    assert float(np.max(np.abs(only_dc))) < 1e-6


def test_fit_full_scale_scales_only_what_exceeds_it():
    x = np.array([0.5, -0.9, 0.2, 0.2], np.float32)  # mean 0
    same, gain = fit_full_scale(x)
    assert gain == 1.0 and same is x
    scaled, gain = fit_full_scale(x * 1e5)
    assert gain == pytest.approx(1 / 0.9e5)
    np.testing.assert_allclose(scaled, x / 0.9, rtol=1e-6)
    offset = x + 0.5  # reaches 1.4 only because of its offset, which is removed anyway
    assert fit_full_scale(offset)[1] == 1.0
    assert fit_full_scale(offset * 3)[1] == pytest.approx(1 / 2.7, rel=1e-6)  # peak 0.9 * 3 from the mean
