import json

import numpy as np
import soundfile as sf

from app.listen import detect_file
from helpers import randomize_batchnorms
from mrconv_audio import MRConvClassifier, MRConvConfig
from mrconv_audio.cli import main
from tone_model import ToneModel, tone_stream


def test_detect_file_finds_words_with_timestamps_at_the_files_rate(tmp_path):
    stream = tone_stream([(1.0, "high", 0.3), (4.0, "low", 0.3), (8.7, "high", 0.3)], seconds=9.2, rate=44100)
    sf.write(tmp_path / "long.wav", np.stack([stream, stream], 1), 44100, subtype="FLOAT")  # stereo float
    result = detect_file(ToneModel(), tmp_path / "long.wav")
    assert result["sample_rate"] == 44100 and result["duration"] == 9.2
    found = result["detections"]
    assert [d["label"] for d in found] == ["high", "low", "high"]  # the last word, near the end, is flushed out
    for d, start in zip(found, [1.0, 4.0, 8.7]):
        assert start - 0.1 <= d["time"] <= start + 0.5


def test_detect_cli_prints_json(tmp_path, capsys):
    model = MRConvClassifier(MRConvConfig(d_model=8, depth=1, labels=["yes", "no", "_silence_", "_unknown_"]))
    randomize_batchnorms(model)
    model.eval().save_pretrained(tmp_path / "m")
    sf.write(tmp_path / "a.wav", np.zeros(8000 * 3, np.float32), 8000)
    assert main(["detect", str(tmp_path / "a.wav"), "--model", str(tmp_path / "m"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sample_rate"] == 8000 and result["duration"] == 3.0
    assert result["detections"] == []  # digital silence is gated


def test_detect_cli_names_a_bad_file(tmp_path, capsys):
    (tmp_path / "notes.wav").write_text("hello")
    model = MRConvClassifier(MRConvConfig(d_model=8, depth=1, labels=["a", "b"]))
    model.eval().save_pretrained(tmp_path / "m")
    assert main(["detect", str(tmp_path / "notes.wav"), "--model", str(tmp_path / "m")]) == 2
    assert "notes.wav: not a readable audio file" in capsys.readouterr().err


def test_detect_scales_a_file_beyond_full_scale_and_ignores_its_dc_offset(tmp_path, capsys):
    """Integer PCM written as float (x 32768) and a DC offset: the shipped model finds the same words as in the clean
    recording, and detect says what it did with the loud file."""
    from helpers import spoken_words
    from test_streaming import WORDS

    stream = spoken_words(WORDS)[0]
    variants = {"clean": stream, "loud": stream * 32768, "offset": stream + 0.3}
    found = {}
    for name, x in variants.items():
        sf.write(tmp_path / f"{name}.wav", x, 16000, subtype="FLOAT")
        assert main(["detect", str(tmp_path / f"{name}.wav"), "--json"]) == 0
        out = capsys.readouterr()
        found[name] = [(d["label"], round(d["time"], 1)) for d in json.loads(out.out)["detections"]]
        assert ("beyond full scale" in out.err) == (name == "loud")
    assert [label for label, _ in found["clean"]] == WORDS
    assert found["loud"] == found["clean"] and found["offset"] == found["clean"]
