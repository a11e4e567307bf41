"""`mrconv-audio listen` running the exported model (onnxruntime, no torch in the engine) on a live device stream: a
virtual PulseAudio microphone plays real words, and listen must detect what `detect` finds offline in the same WAV
with the same exported model. Skips, saying why, where no audio server can start."""
import json

from test_live_audio import Listen, mic, write_words_to_play  # noqa: F401  (mic: the fixture)

from mrconv_audio.evaluate import default_model_dir


def test_listen_with_the_exported_model_hears_the_words(mic, tmp_path):  # noqa: F811
    from app.listen import detect_file
    from mrconv_audio.onnx_model import OnnxModel

    words = write_words_to_play(tmp_path / "words.wav", count=4)
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
