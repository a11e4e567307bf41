"""ONNX export (mrconv_audio/export.py) and the torch-free runtime (mrconv_audio/onnx_model.py): the exported graph
computes the PyTorch model's logits, onnxruntime agrees within 1e-4 on real clips at 8, 16 and 48 kHz, the shipped
files are not stale, the int8 file keeps its accuracy, and the streaming engine and the CLI run exported models."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch

from mrconv_audio.cli import main
from mrconv_audio.data.audio import load_audio, resample
from mrconv_audio.evaluate import default_model_dir
from mrconv_audio.export import ExportGraph, export_onnx, max_relative_error, quantize_int8, weights_digest
from mrconv_audio.model import MRConvClassifier
from mrconv_audio.onnx_model import INT8_NAME, ONNX_NAME, OnnxModel, OnnxModelError, fft_resample
from mrconv_audio.streaming import KeywordSpotter, StreamConfig

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = default_model_dir()
EXAMPLES = sorted((REPO / "app" / "examples").glob("*.wav"))
SHARED = REPO.parent / "shared" / "data"
ROOTS = [SHARED / "speech_commands_subset", SHARED / "speech_commands_more"]
TOLERANCE = 1e-4  # the parity bound: max |onnx - torch| / max |torch|, per clip


@pytest.fixture(scope="module")
def model():
    return MRConvClassifier.from_pretrained(MODEL_DIR).reparameterize()


def real_clips(rate: int) -> torch.Tensor:
    """The demo's six example words and a few clips of the data folders (some shorter than 1 s, zero-padded as the
    engine's window is), brought from 16 kHz to `rate` by sinc resampling: (clips, rate) windows."""
    paths = list(EXAMPLES)
    for word in ("right", "go", "off"):
        paths += sorted((SHARED / "speech_commands_subset" / word).glob("*.wav"))[:1]
    clips = []
    for path in paths:
        x, source = load_audio(path)
        assert source == 16000
        x = resample(torch.from_numpy(x)[None], 16000, rate)[0] if rate != 16000 else torch.from_numpy(x)
        clips.append(torch.nn.functional.pad(x[:rate], (0, max(0, rate - len(x)))))
    return torch.stack(clips)


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 48000])
@pytest.mark.parametrize("mode", ["matmul", "conv", "fft"])
def test_export_graph_computes_the_models_logits(model, rate, mode):
    """The ONNX-friendly graph (DFT basis, mel MatMul, Toeplitz or depthwise Conv, folded norms) in PyTorch, before
    any export: 11,025 Hz has a hop of 110.25 samples and takes the gathered-frames path."""
    x = real_clips(rate)
    with torch.no_grad():
        reference, graph = model(x, sample_rate=rate), ExportGraph(model, rate, mode)(x)
    assert max_relative_error(reference, graph) < 1e-5


def test_export_graph_refuses_what_it_cannot_export(model):
    with pytest.raises(ValueError, match="out of this model's range"):
        ExportGraph(model, 4000)
    with pytest.raises(ValueError, match="log-mel"):
        ExportGraph(MRConvClassifier(MRConvClassifier.from_pretrained(MODEL_DIR).config.__class__.preset("small")),
                    16000)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """model.onnx exported here at 8, 16 and 48 kHz (16 kHz through the CLI, with its int8 variant)."""
    folder = tmp_path_factory.mktemp("onnx")
    files = {}
    for rate in (8000, 48000):
        files[rate] = export_onnx(model, rate, folder / f"model-{rate}.onnx", weights_digest(MODEL_DIR))
    files[16000] = folder / "model-16000.onnx"
    assert main(["export", "--model", str(MODEL_DIR), "--rate", "16000", "--out", str(files[16000]),
                 "--int8", str(folder / "model-16000.int8.onnx")]) == 0
    return files


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_onnxruntime_matches_pytorch_on_real_clips(model, exported, rate):
    onnx_model = OnnxModel(exported[rate])
    assert onnx_model.sample_rate == rate and onnx_model.labels == model.labels
    x = real_clips(rate)
    with torch.no_grad():
        reference = model(x, sample_rate=rate).numpy()
    logits = onnx_model.logits(x.numpy())
    assert max_relative_error(reference, logits) <= TOLERANCE
    assert (logits.argmax(-1) == reference.argmax(-1)).all()
    assert onnx_model.logits(x[:1].numpy()).shape == (1, 12)  # the batch dimension is dynamic


def test_exported_file_is_plain_onnx_with_its_metadata(exported):
    proto = onnx.load(str(exported[16000]))
    ops = {node.op_type for node in proto.graph.node}
    assert not ops & {"DFT", "STFT", "Loop", "If"}  # nothing onnxruntime handles fragilely
    assert {"Conv", "MatMul", "Log"} <= ops
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["format"] == "mrconv-audio-onnx" and meta["sample_rate"] == "16000"
    assert meta["source_sha256"] == weights_digest(MODEL_DIR)
    assert json.loads(meta["labels"])[:2] == ["yes", "no"]


def test_shipped_onnx_files_are_not_stale(model):
    """models/kws12-mrconv/model.onnx (and the int8 file) must come from the shipped weights: regenerate them with
    the command in the model card when the weights change."""
    float_path, int8_path = MODEL_DIR / ONNX_NAME, MODEL_DIR / INT8_NAME
    x = real_clips(16000)
    with torch.no_grad():
        reference = model(x, sample_rate=16000).numpy()
    shipped = OnnxModel(float_path)
    assert shipped.sample_rate == 16000
    assert max_relative_error(reference, shipped.logits(x.numpy())) <= TOLERANCE, (
        f"{float_path} is stale: regenerate it (MODEL_CARD.md, section 'Exported files')")
    digest = weights_digest(MODEL_DIR)
    assert shipped.metadata["source_sha256"] == digest
    if int8_path.exists():
        int8 = OnnxModel(int8_path)
        assert int8.metadata["source_sha256"] == digest and "int8" in int8.metadata["quantization"]
        assert (int8.logits(x.numpy()).argmax(-1) == reference.argmax(-1)).all()


def test_int8_loses_at_most_half_a_point_on_the_test_split(tmp_path):
    """The int8 file ships only if it loses at most 0.5 points to the float file on the joint test split, and its
    accuracies are those the model card's onnx_evaluation.json reports."""
    if not all(root.is_dir() for root in ROOTS):
        pytest.skip(f"{ROOTS} not present")
    if not (MODEL_DIR / INT8_NAME).exists():
        pytest.skip("no int8 file shipped")
    from mrconv_audio.data import SpeechCommands
    from mrconv_audio.data.cache import load_split

    split = load_split(SpeechCommands(ROOTS), "kws12", "test", log=lambda *a: None)
    x = split.audio.astype(np.float32) / 32768.0
    accuracy = {}
    for name in (ONNX_NAME, INT8_NAME):
        onnx_model = OnnxModel(MODEL_DIR / name)
        logits = np.concatenate([onnx_model.logits(x[i : i + 128]) for i in range(0, len(x), 128)])
        accuracy[name] = float((logits.argmax(-1) == split.labels).mean())
    assert accuracy[INT8_NAME] >= accuracy[ONNX_NAME] - 0.005
    reported = json.loads((MODEL_DIR / "onnx_evaluation.json").read_text())
    assert reported["clips"] == len(split)
    assert reported["accuracy"]["16000/onnx_float"] == pytest.approx(accuracy[ONNX_NAME], abs=1e-4)
    assert reported["accuracy"]["16000/onnx_int8"] == pytest.approx(accuracy[INT8_NAME], abs=1e-4)


def test_streaming_engine_runs_an_exported_model_as_it_runs_pytorch(model, exported):
    """The same recording through KeywordSpotter with the PyTorch model and with the exported one: the smoothed
    probabilities of every hop agree within 1e-4 and the detections are the same words at the same times."""
    clips = [load_audio(p)[0] for p in EXAMPLES[:3]]
    gap = np.zeros(8000, np.float32)
    recording = np.concatenate([gap] + [part for clip in clips for part in (clip, gap, gap, gap)])
    runs = {}
    for name, m in (("torch", model), ("onnx", OnnxModel(exported[16000]))):
        spotter = KeywordSpotter(m, 16000, StreamConfig(hop_seconds=0.1), device="cpu")
        runs[name] = spotter.push(recording) + spotter.push(np.zeros(16000, np.float32))
    assert len(runs["torch"]) == len(runs["onnx"]) > 50
    for a, b in zip(runs["torch"], runs["onnx"]):
        np.testing.assert_allclose(b.probabilities, a.probabilities, atol=1e-4)
    words = {name: [(r.detection.label, r.detection.time) for r in results if r.detection]
             for name, results in runs.items()}
    assert words["onnx"] == words["torch"] and len(words["onnx"]) == 3


def test_other_rates_are_resampled_to_the_export_rate(exported):
    """A 16 kHz file fed 48 kHz audio resamples it (FFT): the words still come out, and a sine keeps its level."""
    onnx_model = OnnxModel(exported[16000])
    t = np.arange(48000) / 48000
    sine = np.sin(2 * np.pi * 1000 * t)[None].astype(np.float32)
    down = fft_resample(sine, 16000)
    assert down.shape == (1, 16000)
    np.testing.assert_allclose(down[0], np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000), atol=1e-4)
    for path in EXAMPLES:
        x, _ = load_audio(path)
        x48 = resample(torch.from_numpy(x)[None], 16000, 48000).numpy()
        label = onnx_model.labels[int(onnx_model.logits(x48, 48000).argmax())]
        assert label == path.name.split("_")[0]


def test_bad_exported_files_are_refused_with_the_file_named(tmp_path, model):
    with pytest.raises(OnnxModelError, match="no such file"):
        OnnxModel(tmp_path / "missing.onnx")
    with pytest.raises(OnnxModelError, match=r"model.onnx: missing; export one"):
        OnnxModel(tmp_path)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    with pytest.raises(OnnxModelError, match="garbage.onnx: not a readable ONNX model"):
        OnnxModel(garbage)
    foreign = tmp_path / "foreign.onnx"  # a valid ONNX file that `export` did not write
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(foreign))
    with pytest.raises(OnnxModelError, match="foreign.onnx: metadata field 'format' is None"):
        OnnxModel(foreign)
    onnx_model = OnnxModel(MODEL_DIR)
    with pytest.raises(ValueError, match="longer than the model's 1 s window"):
        onnx_model.logits(np.zeros((1, 16001), np.float32))
    with pytest.raises(ValueError, match="out of range"):
        onnx_model.logits(np.zeros((1, 4000), np.float32), 4000)


def test_detect_cli_with_the_onnx_backend(capsys):
    clip = next(p for p in EXAMPLES if p.name.startswith("stop"))
    assert main(["detect", str(clip), "--model", str(MODEL_DIR / ONNX_NAME), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [d["label"] for d in result["detections"]] == ["stop"]


def test_light_runtime_never_imports_torch(tmp_path):
    """With torch made unimportable, `detect` finds the shipped model.onnx by itself (backend auto) and detects the
    word: the engine, the CLI and the audio reader need no torch. (tests/test_packaging.py installs it for real.)"""
    clip = next(p for p in EXAMPLES if p.name.startswith("yes"))
    code = ("import sys; sys.modules['torch'] = None; from mrconv_audio.cli import main; "
            f"rc = main(['detect', {str(clip)!r}, '--json']); "
            "assert not [m for m in sys.modules if m.startswith('torch') and sys.modules[m] is not None]; sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert [d["label"] for d in json.loads(out.stdout)["detections"]] == ["yes"]


def test_listen_help_and_onnx_backend_without_torch(tmp_path):
    code = "import sys; sys.modules['torch'] = None; from mrconv_audio.cli import main; main(['listen', '--help'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True)
    assert out.returncode == 0 and "--backend" in out.stdout, out.stderr


def test_wav_at_another_rate_through_detect(tmp_path, capsys):
    x, _ = load_audio(next(p for p in EXAMPLES if p.name.startswith("left")))
    x44 = resample(torch.from_numpy(np.concatenate([x, np.zeros(8000, np.float32)]))[None], 16000, 44100)[0].numpy()
    path = tmp_path / "left-44k.wav"
    sf.write(path, x44, 44100)
    assert main(["detect", str(path), "--backend", "onnx", "--json"]) == 0
    assert [d["label"] for d in json.loads(capsys.readouterr().out)["detections"]] == ["left"]


def test_torch_only_commands_say_what_the_light_install_lacks(tmp_path):
    code = "import sys; sys.modules['torch'] = None; from mrconv_audio.cli import main; sys.exit(main(['info']))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True)
    assert out.returncode == 2 and "needs torch, which the light install leaves out" in out.stderr, out.stderr
