import pytest
import torch

from mrconv_audio.fftconv import direct_conv, fast_fft_size, fft_conv, fft_size, kernel_spectrum


def test_fast_fft_size_is_smallest_5_smooth_at_least_n():
    def smooth(n):
        for p in (2, 3, 5):
            while n % p == 0:
                n //= p
        return n == 1

    for n in [1, 2, 7, 17, 97, 1000, 16033, 32001]:
        m = fast_fft_size(n)
        assert m >= n and smooth(m)
        assert not any(smooth(k) for k in range(n, m))


@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("length,taps", [(50, 20), (64, 64), (37, 1), (100, 33)])
def test_fft_conv_equals_direct_linear_convolution(directions, length, taps):
    u = torch.randn(3, 4, length, dtype=torch.float64)
    k = torch.randn(directions, 4, taps, dtype=torch.float64)
    n = fft_size(length, taps)
    y = fft_conv(torch.fft.rfft(u, n=n), kernel_spectrum(k, n), n, length)
    torch.testing.assert_close(y, direct_conv(u, k), rtol=0, atol=1e-12)


def test_bidirectional_convention_lag_zero_is_causal():
    u = torch.zeros(1, 1, 9, dtype=torch.float64)
    u[..., 4] = 1.0  # impulse at t=4
    k = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]], dtype=torch.float64)
    n = fft_size(9, 2)
    y = fft_conv(torch.fft.rfft(u, n=n), kernel_spectrum(k, n), n, 9)[0, 0]
    # causal taps land at t=4,5; anti-causal tap s lands at t = 4 - (s+1)
    assert y.tolist() == pytest.approx([0, 0, 4, 3, 1, 2, 0, 0, 0])


def test_kernel_longer_than_half_the_fft_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        kernel_spectrum(torch.randn(1, 2, 40), 64)
