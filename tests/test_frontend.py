import math

import pytest
import torch

from mrconv_audio.data.audio import resample
from mrconv_audio.frontend import LogMel, mel_filterbank

RATES = [8000, 11025, 16000, 22050, 32000, 44100, 48000]


def tones(rate: int, parts=((0.3, 440.0), (0.2, 1250.0), (0.1, 2900.0)), seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(round(rate * seconds), dtype=torch.float64) / rate
    return sum(a * torch.sin(2 * math.pi * f * t + f) for a, f in parts)[None]


@pytest.mark.parametrize("rate", RATES)
def test_every_rate_gives_frame_rate_frames_per_second(rate):
    front = LogMel()
    assert front(torch.zeros(2, rate), rate).shape == (2, 40, 100)
    assert front(torch.zeros(1, rate // 2), rate).shape == (1, 40, 50)
    assert front.frames(rate // 2, rate) == 50


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 44100])
def test_a_sinusoid_reads_a_squared_over_four_summed_over_the_bands(rate):
    for freq in (300.0, 1000.0, 3100.0):  # between the first and the last band centre: the triangles sum to one
        mel = LogMel(floor=0.0)(tones(rate, parts=((0.5, freq),)), rate)[0, :, 10:90].exp()
        torch.testing.assert_close(mel.sum(0), torch.full((80,), 0.25 * 0.5**2, dtype=mel.dtype), rtol=0.01, atol=0)


def test_the_filters_sit_at_the_same_frequencies_at_every_rate():
    reference = mel_filterbank(40, 20.0, 4000.0, 16000.0, 800)
    for rate in (8000, 32000, 48000):
        bank = mel_filterbank(40, 20.0, 4000.0, float(rate), round(0.05 * rate))
        torch.testing.assert_close(bank[:, :201], reference[:, :201], rtol=0, atol=1e-6)  # 20 Hz bins up to 4 kHz
        assert not bank[:, 201:].any()


@pytest.mark.parametrize("rate", [r for r in RATES if r != 16000])
def test_the_same_sound_reads_alike_at_every_rate(rate):
    front = LogMel()
    reference = front(tones(16000), 16000)[0, :, 5:95]
    at_rate = front(tones(rate), rate)[0, :, 5:95]
    loud = reference > math.log(1e-4)  # bands the tones fill (the rest sit at the floor, where leakage differs)
    difference = (at_rate - reference).abs()
    # Log units. Exact at rates where the window and hop are whole samples; the rest round them (11,025 Hz: 275.6
    # samples), which moves the loud bands by at most 0.7% (measured 0.0065 at 11,025 Hz).
    exact = (0.025 * rate).is_integer() and (rate / 100).is_integer()
    assert difference[loud].max() < (1e-5 if exact else 0.01)


def test_naively_decimated_audio_reads_like_the_original_below_the_new_nyquist():
    front = LogMel()
    x = tones(16000)  # nothing above 4 kHz: keeping every other sample loses nothing
    reference = front(x, 16000)[0, :, 5:95]
    loud = reference > math.log(1e-4)
    assert (front(x[:, ::2], 8000)[0, :, 5:95] - reference)[loud].abs().max() < 1e-5
    assert (front(resample(x, 16000, 48000), 48000)[0, :, 5:95] - reference)[loud].abs().max() < 0.01


def test_rates_below_twice_the_top_band_are_refused():
    with pytest.raises(ValueError, match="6000 Hz input does not carry the front end's bands up to 4000 Hz"):
        LogMel()(torch.zeros(1, 6000), 6000)
