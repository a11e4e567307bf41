"""The Gradio demo without a browser: the clip analysis, and the served app through gradio_client."""
import concurrent.futures
import socket

import numpy as np
import pytest
import soundfile as sf

from app.demo import MAX_CLIP_SECONDS, ClipAnalyzer, InputProblem, launch
from helpers import randomize_batchnorms
from mrconv_audio import MRConvClassifier, MRConvConfig
from speech_tree import KEYWORDS

LABELS = KEYWORDS + ["_silence_", "_unknown_"]


def tiny_model():
    model = MRConvClassifier(MRConvConfig(d_model=8, depth=2, labels=LABELS))
    randomize_batchnorms(model)
    return model.eval()


@pytest.fixture(scope="module")
def analyzer():
    return ClipAnalyzer(tiny_model())


def write(path, x, rate, subtype="PCM_16"):
    sf.write(path, x, rate, subtype=subtype)
    return path


def speechlike(seconds, rate, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * np.sin(2 * np.pi * 300 * t) * np.exp(-((t - seconds / 2) ** 2) / 0.02)
            + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def test_clip_at_its_own_rate_gives_top_k(analyzer, tmp_path):
    stereo = np.stack([speechlike(1, 48000), speechlike(1, 48000, 1)], 1)
    result = analyzer.classify(write(tmp_path / "s.wav", stereo, 48000, "FLOAT"))  # stereo 48 kHz float works
    assert result["sample_rate"] == 48000 and len(result["confidences"]) == 5
    assert result["label"] == max(result["confidences"], key=result["confidences"].get)
    assert result["timeline"] == []


def test_long_clip_gets_a_detection_timeline(analyzer, tmp_path):
    result = analyzer.classify(write(tmp_path / "l.wav", speechlike(5, 22050), 22050))
    assert result["duration"] == pytest.approx(5, abs=1e-3) and isinstance(result["timeline"], list)


@pytest.mark.parametrize("case,message", [
    ("text", "not a readable audio file"),
    ("empty", "contains no samples"),
    ("silent", "silent"),
    ("nan", "NaN"),
    ("long", f"the limit is {MAX_CLIP_SECONDS:g} s"),
    ("rate", "outside what this model runs at"),
    ("none", "No audio"),
])
def test_bad_input_gets_a_clear_message(analyzer, tmp_path, case, message):
    path = tmp_path / f"{case}.wav"
    if case == "text":
        path.write_text("definitely not a wav")
    elif case == "empty":
        write(path, np.zeros(0, np.float32), 16000)
    elif case == "silent":
        write(path, np.zeros(16000, np.float32), 16000)
    elif case == "nan":
        x = speechlike(1, 16000)
        x[100] = np.nan
        write(path, x, 16000, "FLOAT")
    elif case == "long":
        write(path, np.zeros(16000 * 600, np.int16), 16000)  # ten minutes
    elif case == "rate":
        write(path, speechlike(1, 1000), 1000)
    with pytest.raises(InputProblem, match=message):
        analyzer.classify(None if case == "none" else path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    port = free_port()
    demo_app = launch(tiny_model(), "tiny-test-model", port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    from gradio import close_all

    close_all()


def test_predict_api_with_gradio_client_and_concurrent_clients(served, tmp_path):
    from gradio_client import Client, handle_file

    wav = write(tmp_path / "a.wav", speechlike(1, 16000), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_text("nope")

    def call(path):
        return Client(served, verbose=False).predict(handle_file(str(path)), api_name="/predict")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, [wav] * 4))
    assert all(r["label"] in LABELS and len(r["confidences"]) == 5 for r in results)
    assert len({r["label"] for r in results}) == 1  # the same clip, the same answer
    with pytest.raises(Exception, match="not a readable audio file"):
        call(bad)
    assert call(wav)["label"] == results[0]["label"]  # the server is still up and serving
