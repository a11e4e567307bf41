"""A real browser: Playwright driving Debian's Chromium against the running demo.
Skipped only when Chromium or Playwright is not installed (.ci/run installs both)."""
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from mrconv_audio import MRConvClassifier  # noqa: E402
from helpers import spoken_words  # noqa: E402
from test_demo import LABELS, free_port, speechlike, tiny_model  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def url():
    from app.demo import launch

    port = free_port()
    launch(tiny_model(), "tiny-test-model", port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    from gradio import close_all

    close_all()


@pytest.fixture(scope="module")
def shipped_url():
    from app.demo import launch
    from mrconv_audio.cli import load_model

    port = free_port()
    launch(load_model(None), "kws12-mrconv", port=port, block=False)
    yield f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def playwright():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        yield p


def open_page(playwright, tmp_path, url, extra_args=(), permissions=()):
    context = playwright.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS + list(extra_args),
        permissions=list(permissions))
    page = context.new_page()
    page.goto(url, wait_until="load")
    page.wait_for_selector("text=MRConv keyword spotting", timeout=90000)
    return context, page


def upload(page, path):
    """Put a file into the Clip tab's audio, clearing what is there first."""
    clear = page.locator("#clip-audio button[aria-label='Clear']")
    if clear.count():
        clear.click()
    page.locator("#clip-audio input[type=file]").set_input_files(str(path))


def test_upload_classifies_at_once(playwright, url, tmp_path):
    from gradio_client import Client, handle_file

    wav = tmp_path / "word.wav"
    sf.write(wav, speechlike(1, 16000), 16000)
    expected = Client(url, verbose=False).predict(handle_file(str(wav)), api_name="/predict")["label"]
    context, page = open_page(playwright, tmp_path, url)
    try:
        page.get_by_role("tab", name="Clip").click()
        upload(page, wav)  # no button pressed
        page.wait_for_selector("#clip-info:has-text('16000 Hz')", timeout=90000)
        assert expected in page.locator("#clip-label").inner_text()
        page.screenshot(path=str(tmp_path / "clip.png"), full_page=True)
    finally:
        context.close()


def test_an_example_button_shows_its_word_and_classifies_at_once(playwright, shipped_url, tmp_path):
    context, page = open_page(playwright, tmp_path, shipped_url)
    try:
        page.get_by_role("tab", name="Clip").click()
        page.get_by_role("button", name="left", exact=True).click()
        page.wait_for_selector("#clip-info:has-text('16000 Hz')", timeout=90000)
        assert page.locator("#clip-label [data-testid=label-output-value]").inner_text() == "left"
    finally:
        context.close()


def test_long_clip_headline_names_the_words_detected(playwright, shipped_url, tmp_path):
    wav = tmp_path / "words.wav"
    sf.write(wav, spoken_words(["down", "left", "no", "stop"])[0], 16000)
    context, page = open_page(playwright, tmp_path, shipped_url)
    try:
        page.get_by_role("tab", name="Clip").click()
        upload(page, wav)
        page.wait_for_selector("#clip-info:has-text('11.00 s')", timeout=90000)
        assert page.locator("#clip-label [data-testid=label-output-value]").inner_text() == "down, left, no, stop"
        page.wait_for_selector("#timeline:has-text('stop')", timeout=90000)
        words = [w for w in page.locator("#timeline").inner_text().split() if w in LABELS]
        assert words == ["down", "left", "no", "stop"]
    finally:
        context.close()


def test_a_bad_file_clears_the_last_result_and_says_why(playwright, url, tmp_path):
    good, bad = tmp_path / "word.wav", tmp_path / "notes.wav"
    sf.write(good, speechlike(3, 16000), 16000)
    bad.write_text("these are my notes, not audio")
    context, page = open_page(playwright, tmp_path, url)
    try:
        page.get_by_role("tab", name="Clip").click()
        upload(page, good)
        page.wait_for_selector("#clip-info:has-text('16000 Hz')", timeout=90000)
        page.wait_for_selector("#clip-label [data-testid=label-output-value]", timeout=90000)
        upload(page, bad)
        page.wait_for_selector("#clip-info:has-text('Cannot use this file')", timeout=90000)
        assert page.locator("#clip-label [data-testid=label-output-value]").count() == 0  # the old label is gone
        assert "16000 Hz" not in page.locator("#clip-info").inner_text()
        assert not [w for w in page.locator("#timeline").inner_text().split() if w in LABELS]
        assert page.get_by_text("Error", exact=True).count() == 0  # no red Error pills over the outputs
        # Classify with no audio: the same, with its own message.
        page.locator("#clip-audio button[aria-label='Clear']").click()
        page.locator("#classify").click()
        page.wait_for_selector("#clip-info:has-text('No audio')", timeout=90000)
        assert page.get_by_text("Error", exact=True).count() == 0
        page.screenshot(path=str(tmp_path / "bad.png"), full_page=True)
    finally:
        context.close()


def test_labels_show_literally(playwright, shipped_url, tmp_path):
    wav = tmp_path / "noise.wav"  # a second of low noise: the shipped model calls it _silence_
    sf.write(wav, 0.01 * np.random.default_rng(0).standard_normal(16000).astype(np.float32), 16000)
    context, page = open_page(playwright, tmp_path, shipped_url)
    try:
        page.get_by_role("tab", name="Clip").click()
        upload(page, wav)
        page.wait_for_selector("#clip-info:has-text('16000 Hz')", timeout=90000)
        assert page.locator("#clip-info").inner_text().startswith("_silence_ — ")  # not an italic "silence"
        assert page.locator("#clip-info em").count() == 0
    finally:
        context.close()


def test_browser_microphone_stream_updates_the_live_label(playwright, url, tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(48000 * 6) / 48000
    audio = 0.3 * np.sin(2 * np.pi * 300 * t * (1 + 0.5 * np.sin(t))) + 0.05 * rng.standard_normal(len(t))
    wav = tmp_path / "mic.wav"
    sf.write(wav, audio.astype(np.float32), 48000, subtype="PCM_16")
    fake_mic = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}"]
    context, page = open_page(playwright, tmp_path, url, fake_mic, permissions=["microphone"])
    try:
        page.locator("#live-mic").get_by_role("button", name="Record").click()
        label = page.locator("#live-label")
        page.wait_for_function("() => document.querySelector('#live-label').innerText.match(/\\d\\.\\d|%/)",
                               timeout=90000)
        first = label.inner_text()
        seen = {first}
        # The label and probabilities keep updating while audio streams in: wait for the next change (an event, not
        # a count of polls in a fixed time, which a busy machine missed), then for the text to name a class.
        page.wait_for_function("first => document.querySelector('#live-label').innerText !== first",
                               arg=first, timeout=120000)
        seen.add(label.inner_text())
        page.wait_for_function("names => names.some(n => document.querySelector('#live-label').innerText.includes(n))",
                               arg=LABELS, timeout=120000)
        seen.add(label.inner_text())
        assert len(seen) > 1
        assert any(name in text for text in seen for name in LABELS)
        assert "dBFS" in page.locator("#live-level textarea").input_value()  # the input level follows the audio
        help_text = page.locator("#live-help").inner_text()
        assert "Record" in help_text and all(word in help_text for word in LABELS[:10])
    finally:
        context.close()


class SlowModel(MRConvClassifier):
    """The tiny test model, 0.4 s a window whatever the machine: a 0.25 s hop cannot keep up."""

    def forward(self, *args, **kwargs):
        time.sleep(0.4)
        return super().forward(*args, **kwargs)


def test_the_live_tab_says_when_the_stream_falls_behind(playwright, tmp_path):
    from gradio import close_all

    from app.demo import launch

    fast = tiny_model()
    slow = SlowModel(fast.config)
    slow.load_state_dict(fast.state_dict())
    port = free_port()
    launch(slow.eval(), "slow-test-model", port=port, block=False)
    wav = tmp_path / "mic.wav"
    sf.write(wav, speechlike(6, 48000), 48000, subtype="PCM_16")
    fake_mic = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}"]
    context, page = open_page(playwright, tmp_path, f"http://127.0.0.1:{port}/", fake_mic, permissions=["microphone"])
    try:
        assert page.locator("#live-status").inner_text().strip() == ""  # no warning before streaming
        page.locator("#live-mic").get_by_role("button", name="Record").click()
        page.wait_for_selector("#live-status:has-text('Falling behind')", timeout=120000)
        warning = page.locator("#live-status").inner_text()
        assert "Fix:" in warning, warning  # and what to do about it
    finally:
        context.close()
        close_all()
