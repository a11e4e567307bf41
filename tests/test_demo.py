"""The Gradio demo without a browser: the clip analysis, and the served app through gradio_client."""
import concurrent.futures
import socket

import numpy as np
import pytest
import soundfile as sf
import torch

from app.demo import (EXAMPLES, MAX_CLIP_SECONDS, NO_KEYWORD, ClipAnalyzer, InputProblem, example_word, kernel_figure,
                      launch, literal)
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
    assert result["long"] and result["label"] == (", ".join(w for _, w, _ in result["timeline"]) or NO_KEYWORD)


def spoken_words(words, rate=16000, gap=1.5):
    """The shipped examples of `words`, each after `gap` seconds of silence, and their start times."""
    parts, starts = [], []
    for word in words:
        (path,) = EXAMPLES.glob(f"{word}_*.wav")
        x, r = sf.read(path, dtype="float32")
        assert r == rate
        parts += [np.zeros(int(gap * rate), np.float32), x]
        starts.append(sum(len(p) for p in parts[:-1]) / rate)
    return np.concatenate(parts + [np.zeros(rate, np.float32)]), starts


@pytest.fixture(scope="module")
def shipped():
    from mrconv_audio.cli import load_model

    return ClipAnalyzer(load_model(None))


def test_long_clip_headline_is_the_words_detected_in_order(shipped, tmp_path):
    # Four real words in 11 s: the headline names them in order, not the top class of one window.
    x, starts = spoken_words(["down", "left", "no", "stop"])
    result = shipped.classify(write(tmp_path / "words.wav", x, 16000))
    assert [w for _, w, _ in result["timeline"]] == ["down", "left", "no", "stop"]
    assert result["label"] == "down, left, no, stop"
    for (time, _, _), start in zip(result["timeline"], starts):
        assert start - 0.2 <= time <= start + 1.2
    # The same clip, shorter than the window, is one word: its top class.
    (path,) = EXAMPLES.glob("yes_*.wav")
    short = shipped.classify(path)
    assert not short["long"] and short["timeline"] == [] and short["label"] == "yes"


def test_long_clip_without_keywords_says_so(shipped, tmp_path):
    quiet_noise = 0.003 * np.random.default_rng(0).standard_normal(16000 * 4).astype(np.float32)
    result = shipped.classify(write(tmp_path / "noise.wav", quiet_noise, 16000))
    assert result["timeline"] == [] and result["label"] == NO_KEYWORD


def test_labels_are_shown_literally_and_examples_by_their_word():
    assert literal("_silence_") == "\\_silence\\_" and literal("_unknown_") == "\\_unknown\\_"
    assert literal("a*b [c]") == "a\\*b \\[c\\]"
    assert example_word("down_3b4f8f24_nohash_0.wav") == "down"
    assert sorted(example_word(p) for p in EXAMPLES.glob("*.wav")) == ["down", "left", "no", "stop", "up", "yes"]


def test_kernel_axis_tick_labels_do_not_overlap():
    fig = kernel_figure(tiny_model().reparameterize())
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()),
                       key=lambda b: b.x0)
        assert len(boxes) >= 3
        for left, right in zip(boxes, boxes[1:]):
            assert left.x1 + 5 < right.x0, f"tick labels overlap: {left} {right}"


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
    assert all(r["label"] in LABELS and len(r["confidences"]) == 5 and r["detections"] == [] for r in results)
    assert len({r["label"] for r in results}) == 1  # the same clip, the same answer
    with pytest.raises(Exception, match="not a readable audio file"):
        call(bad)
    assert call(wav)["label"] == results[0]["label"]  # the server is still up and serving


def test_predict_api_returns_the_detections_of_a_long_clip(served, tmp_path):
    from gradio_client import Client, handle_file

    wav = write(tmp_path / "long.wav", speechlike(4, 16000), 16000)
    result = Client(served, verbose=False).predict(handle_file(str(wav)), api_name="/predict")
    assert set(result) == {"label", "confidences", "detections", "notes"} and len(result["confidences"]) == 5
    assert result["notes"] == []
    assert result["label"] == (", ".join(d["label"] for d in result["detections"]) or NO_KEYWORD)


def test_launch_names_the_command_options_not_gradios(capsys):
    from gradio import close_all

    port = free_port()
    launch(tiny_model(), "tiny-test-model", port=port, block=False, quiet=False)
    try:
        out = capsys.readouterr().out
        assert f"http://127.0.0.1:{port}" in out and "--share" in out and "share=True" not in out
        with pytest.raises(OSError, match=f"port {port} on 127.0.0.1 is in use") as error:
            launch(tiny_model(), "tiny-test-model", port=port, block=False)
        assert "--port" in str(error.value) and "GRADIO_SERVER_PORT" not in str(error.value)
    finally:
        close_all()


def test_a_loud_or_offset_clip_reads_as_the_clean_one_and_says_what_was_done(shipped, tmp_path):
    """Float audio far beyond full scale and a DC offset: every example reads as its own word, with a note for the
    scaled one (the shipped model read the x1e5 'stop' stream as 'down' before)."""
    for path in sorted(EXAMPLES.glob("*.wav")):
        x, rate = sf.read(path, dtype="float32")
        word = example_word(path)
        loud = shipped.classify(write(tmp_path / "loud.wav", x * 1e5, rate, "FLOAT"))
        assert loud["label"] == word and "beyond full scale" in loud["notes"][0]
        clean = shipped.classify(path)["confidences"][word]
        offset = shipped.classify(write(tmp_path / "offset.wav", x + 0.7, rate, "FLOAT"))
        assert offset["label"] == word and offset["notes"] == []
        # the same confidence as the clean clip (without DC removal "left" drops from 1.00 to 0.81)
        assert offset["confidences"][word] == pytest.approx(clean, abs=0.02)


def test_non_finite_scores_are_an_error_never_a_label():
    from mrconv_audio.cli import load_model

    model = load_model(None)
    analyzer = ClipAnalyzer(model)
    with torch.no_grad():
        model.decoder.bias[0] = float("nan")  # corrupted after loading (loading refuses NaN weights)
    (path,) = EXAMPLES.glob("yes_*.wav")
    with pytest.raises(InputProblem, match="non-finite scores"):
        analyzer.classify(path)
