"""A real browser: Playwright driving Debian's Chromium against the running demo.
Skipped only when Chromium or Playwright is not installed (.ci/run installs both)."""
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
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


def test_upload_a_wav_and_read_the_label(playwright, url, tmp_path):
    from gradio_client import Client, handle_file

    wav = tmp_path / "word.wav"
    sf.write(wav, speechlike(1, 16000), 16000)
    expected = Client(url, verbose=False).predict(handle_file(str(wav)), api_name="/predict")["label"]
    context, page = open_page(playwright, tmp_path, url)
    try:
        page.get_by_role("tab", name="Clip").click()
        page.locator("#clip-audio input[type=file]").set_input_files(str(wav))
        page.locator("#classify").click()
        page.wait_for_selector("#clip-info:has-text('16000 Hz')", timeout=90000)
        assert expected in page.locator("#clip-label").inner_text()
        page.screenshot(path=str(tmp_path / "clip.png"), full_page=True)
    finally:
        context.close()


def test_a_bad_file_shows_the_error_in_the_page(playwright, url, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("these are my notes, not audio")
    context, page = open_page(playwright, tmp_path, url)
    try:
        page.get_by_role("tab", name="Clip").click()
        page.locator("#clip-audio input[type=file]").set_input_files(str(bad))
        page.wait_for_timeout(1000)
        page.locator("#classify").click()
        page.wait_for_selector("text=Cannot use this file", timeout=90000)
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
        seen = {label.inner_text()}
        for _ in range(20):
            page.wait_for_timeout(500)
            seen.add(label.inner_text())
        assert len(seen) > 1  # the label and probabilities keep updating while audio streams in
        assert any(name in text for text in seen for name in LABELS)
    finally:
        context.close()
