"""`mrconv-audio listen` running the exported model (onnxruntime, no torch in the engine) on a live device stream: a
virtual PulseAudio microphone plays real words, and listen must detect what `detect` finds offline in the same WAV
with the same exported model. Skips, saying why, where no audio server can start."""
import json

import numpy as np
import soundfile as sf
from test_live_audio import ROOT, Listen, mic, with_silence  # noqa: F401  (mic: the fixture)

from mrconv_audio.audiofile import load_audio
from mrconv_audio.evaluate import default_model_dir


def test_listen_with_the_exported_model_hears_the_words(mic, tmp_path):  # noqa: F811
    from app.listen import detect_file
    from mrconv_audio.onnx_model import OnnxModel

    words, parts = [], [np.zeros(8000, np.float32)]
    for clip in sorted((ROOT / "app" / "examples").glob("*.wav"))[:4]:
        x, rate = load_audio(clip)
        assert rate == 16000
        words.append(clip.name.split("_")[0])
        parts += [np.pad(x, (0, 16000 - len(x))), np.zeros(16000, np.float32)]
    sf.write(tmp_path / "words.wav", with_silence(np.concatenate(parts), 2.0), 16000)
    exported = default_model_dir() / "model.onnx"
    offline = detect_file(OnnxModel(exported), tmp_path / "words.wav", hop=0.25)["detections"]
    assert [d["label"] for d in offline] == words, offline

    listen = Listen(["--device", "default", "--samplerate", "16000", "--model", str(exported)], mic.env)
    listen.wait_flowing()
    assert mic.play(tmp_path / "words.wav").wait(timeout=120) == 0
    listen.wait_heard_more(1.0)
    out, stats = listen.stop()
    assert stats["dropped_blocks"] == 0 and stats["errors"] == 0, stats
    live = [json.loads(line) for line in out.splitlines()]
    assert [d["label"] for d in live] == words, (live, offline)
