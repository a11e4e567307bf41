"""The Gradio demo without a browser: the clip analysis, and the served app through gradio_client."""
import concurrent.futures
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from app.demo import (EXAMPLES, MAX_CLIP_SECONDS, NO_KEYWORD, ClipAnalyzer, InputProblem, example_word, kernel_figure,
                      launch, literal)
from app.limits import ClientLimits, TooManyRequests
from helpers import randomize_batchnorms, spoken_words
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
    for (at, _, _), start in zip(result["timeline"], starts):
        assert start - 0.2 <= at <= start + 1.2
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
    ("rate-flac", "Sample rate 600000 Hz is outside"),
    ("channels", "has 3 channels"),
    ("none", "No audio"),
])
def test_bad_input_gets_a_clear_message(analyzer, tmp_path, case, message, monkeypatch):
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
    elif case == "rate-flac":  # 60 s at 600 kHz, 8 channels: small as FLAC, 1.1 GB decoded; refused from the header
        path = write(tmp_path / "huge.flac", np.zeros((600000 * 60, 8), np.int16), 600000)
        assert path.stat().st_size < 20e6
        monkeypatch.setattr("app.demo.load_audio", lambda *a, **k: pytest.fail("decoded a clip refused by its header"))
    elif case == "channels":
        write(path, np.stack([speechlike(1, 16000)] * 3, 1), 16000)
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
    client = Client(served, verbose=False)
    result = client.predict(handle_file(str(wav)), True, api_name="/predict")
    assert set(result) == {"label", "confidences", "detections", "scanned_seconds", "notes"}
    assert len(result["confidences"]) == 5 and result["notes"] == []
    assert result["label"] == (", ".join(d["label"] for d in result["detections"]) or NO_KEYWORD)
    assert result["scanned_seconds"] == 4.0
    # The timeline only when asked: by default the label is the loudest window's top class, no detections.
    plain = client.predict(handle_file(str(wav)), api_name="/predict")
    assert plain["detections"] == [] and plain["label"] == plain["confidences"][0]["label"]


def test_timeline_stops_when_the_request_has_spent_its_model_time(tmp_path):
    wav = write(tmp_path / "long.wav", speechlike(30, 16000), 16000)
    full = ClipAnalyzer(tiny_model()).classify(wav)
    assert full["scanned"] == 30
    short = ClipAnalyzer(tiny_model(), budget_s=0.05).classify(wav)
    assert 0 < short["scanned"] < 10, short["scanned"]


def test_a_short_clip_is_not_held_back_by_four_clients_sending_the_largest_clips(tmp_path):
    """Four clients each send the largest clip the demo accepts (60 s at 96 kHz) and ask for its detections; a fifth
    sends a 1 s clip while they run. Without fair turns the fifth waits for a slot, that is, for a large request to
    end; with them it waits about one hop per large request. Measured against how long the large ones still ran."""
    from gradio import close_all
    from gradio_client import Client, handle_file

    port = free_port()
    demo_app = launch(tiny_model(), "tiny-test-model", port=port, block=False, budget_s=4.0)
    url = f"http://127.0.0.1:{port}/"
    try:
        big = write(tmp_path / "big.wav", speechlike(MAX_CLIP_SECONDS, 96000), 96000)
        small = write(tmp_path / "small.wav", speechlike(1, 16000), 16000)
        clients = [Client(url, verbose=False) for _ in range(5)]
        jobs = [c.submit(handle_file(str(big)), True, api_name="/predict") for c in clients[:4]]
        assert demo_app.analyzer.turns.wait_active(4, timeout=300), "the four large requests did not start"
        start = time.monotonic()
        answer = clients[4].predict(handle_file(str(small)), api_name="/predict")
        small_seconds = time.monotonic() - start
        assert answer["label"] in LABELS
        done = concurrent.futures.wait([j.future for j in jobs], return_when=concurrent.futures.FIRST_COMPLETED).done
        first_big_seconds = time.monotonic() - start
        assert all(j.done() is False or j.result()["scanned_seconds"] > 0 for j in jobs) and done
        # Fair: the short clip was answered long before any large request ended.
        assert small_seconds < first_big_seconds / 3, (small_seconds, first_big_seconds)
        for job in jobs:
            assert 0 < job.result()["scanned_seconds"] < MAX_CLIP_SECONDS  # each stopped at its model-time budget
    finally:
        close_all()


def test_a_live_chunk_takes_a_turn_per_hop_and_a_huge_one_is_refused(analyzer):
    from mrconv_audio.streaming import KeywordSpotter, StreamConfig

    spotter = KeywordSpotter(analyzer.model, 16000, StreamConfig(hop_seconds=0.25), device=str(analyzer.device))
    before = analyzer.turns.taken
    assert len(analyzer.live(spotter, speechlike(1, 16000))) == 4
    assert analyzer.turns.taken - before == 4  # others get the model between the hops of a chunk
    with pytest.raises(InputProblem, match="a chunk of 60.0 s; at most 5 s at a time"):
        analyzer.live(spotter, np.zeros(16000 * 60, np.float32))


def test_client_limits_refuse_with_the_reason():
    now = [0.0]
    limits = ClientLimits(per_session=1, per_address=2, per_minute=3, clock=lambda: now[0])
    with limits.admit("1.2.3.4", "a"):
        with pytest.raises(TooManyRequests, match="this session at once: at most 1"):
            with limits.admit("1.2.3.4", "a"):
                pass
        with limits.admit("1.2.3.4", "b"):
            with pytest.raises(TooManyRequests, match="from 1.2.3.4 at once: at most 2"):
                with limits.admit("1.2.3.4", "c"):
                    pass
            with limits.admit("5.6.7.8", "d"):  # another address is not held back
                pass
    now[0] = 30.0
    with limits.admit("1.2.3.4", "e"):  # refusals do not count: the third request this minute
        pass
    with pytest.raises(TooManyRequests, match="at most 3 a minute. Try again in 30 s"):
        with limits.admit("1.2.3.4", "f"):
            pass
    now[0] = 61.0
    with limits.admit("1.2.3.4", "f"):  # a minute after the first
        pass
    assert not limits._sessions and not limits._addresses and set(limits._recent) == {"1.2.3.4"}


def test_the_api_refuses_a_client_over_its_rate_with_a_clear_message(tmp_path):
    from gradio import close_all
    from gradio_client import Client, handle_file

    port = free_port()
    launch(tiny_model(), "tiny-test-model", port=port, block=False, limits=ClientLimits(per_minute=2))
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        wav = handle_file(str(write(tmp_path / "a.wav", speechlike(1, 16000), 16000)))
        client.predict(wav, api_name="/predict")
        client.predict(wav, api_name="/predict")
        with pytest.raises(Exception, match="Too many requests from 127.0.0.1: at most 2 a minute"):
            client.predict(wav, api_name="/predict")
    finally:
        close_all()


def test_uploads_are_deleted_after_their_time(tmp_path):
    """Random bytes uploaded through the API are refused, and the uploaded file leaves the temp folder."""
    from gradio import close_all
    from gradio_client import Client, handle_file

    port = free_port()
    demo_app = launch(tiny_model(), "tiny-test-model", port=port, block=False, upload_expiry=(1, 1))
    try:
        junk = tmp_path / "junk.wav"
        junk.write_bytes(np.random.default_rng(0).bytes(100_000))
        with pytest.raises(Exception, match="not a readable audio file"):
            Client(f"http://127.0.0.1:{port}/", verbose=False).predict(handle_file(str(junk)), api_name="/predict")
        uploaded = [Path(f) for f in demo_app.upload_file_set if Path(f).name == "junk.wav"]
        assert uploaded, demo_app.upload_file_set
        deadline = time.monotonic() + 120  # deleted within seconds; the margin is for a busy machine
        while any(f.exists() for f in uploaded) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(f.exists() for f in uploaded), "the upload is still in the temp folder"
    finally:
        close_all()


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
