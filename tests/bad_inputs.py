"""A corpus of bad audio inputs, generated into a folder: every way a file can be wrong that we have met or can
imagine (empty, not audio, cut short, NaN, 200 kHz, no samples, far too loud, stereo, a name that is not UTF-8, a FIFO, a
folder, a symlink loop...). Every tool that reads audio files must refuse each refused entry with a message naming it
(or a skipped-list entry), never hang and never end in a traceback; the usable entries must be used.

    corpus = make_bad_inputs(folder)   # [BadInput], also reusable for the demo API and from_pretrained checks
    models = make_bad_models(folder, good_model_dir)   # [BadModel]: model folders corrupted every way we know
    with fifo_guard(path) as opened:   # the code under test must never open a FIFO
        ...
    assert not opened
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf


@dataclass(frozen=True)
class BadInput:
    name: str  # a short id, e.g. "nan"
    path: Path  # the file (the non-UTF-8 name holds surrogate escapes, as os.listdir gives it)
    problem: str  # what is wrong with it, in words
    usable: bool = False  # a file the tools should use (stereo, beyond full scale): accepted, not refused
    rate: int | None = None  # readable, at a rate a model may not run at: refused only where the rate is out of range

    @property
    def shown(self) -> str:
        """The file's name as messages show it: undecodable bytes as \\xNN escapes."""
        return os.fsencode(self.path).decode("utf-8", "backslashreplace")


def tone(rate: int, seconds: float = 1.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def make_bad_inputs(folder, prefix: str = "", rate: int = 16000, fifo: bool = True) -> list[BadInput]:
    """Write the corpus into `folder` (created). `prefix` starts every file name (e.g. "bad_" or a speaker id for
    a Speech Commands tree: "deadbeef_nohash_"). fifo=False leaves out the FIFO (for code that cannot be guarded)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    corpus = []

    def add(stem: str, problem: str, path=None, **kw) -> Path:
        path = path or folder / f"{prefix}{stem}.wav"
        corpus.append(BadInput(stem, path, problem, **kw))
        return path

    add("empty", "an empty file").write_bytes(b"")
    add("random_bytes", "random bytes, not audio").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    good = folder / ".good.wav"
    sf.write(good, tone(rate), rate, subtype="PCM_16")
    add("truncated_header", "a WAV header cut short").write_bytes(good.read_bytes()[:30])
    good.unlink()
    nan = tone(rate)
    nan[100:200] = np.nan
    sf.write(add("nan", "NaN samples in a float WAV"), nan, rate, subtype="FLOAT")
    inf = tone(rate)
    inf[500] = np.inf
    sf.write(add("inf", "an infinite sample in a float WAV"), inf, rate, subtype="FLOAT")
    sf.write(add("rate_200k", "200 kHz, above what a 16 kHz model runs at", rate=200_000), tone(200_000), 200_000,
             subtype="PCM_16")
    sf.write(add("no_samples", "a valid WAV header with 0 samples"), np.zeros(0, np.float32), rate)
    sf.write(add("huge_amplitude", "a float WAV at 1e5 times full scale (scaled back to it)", usable=True),
             tone(rate, amplitude=1e5), rate, subtype="FLOAT")
    sf.write(add("stereo", "two channels (averaged to mono)", usable=True), np.stack([tone(rate)] * 2, 1), rate)
    # A name that is not valid UTF-8 (bytes 0xff 0xfe): Python sees it with surrogate escapes, as os.listdir does.
    name = folder / os.fsdecode(os.fsencode(prefix) + b"latin1_\xff\xfe.wav")
    with open(add("non_utf8_name", "a file name that is not valid UTF-8", name), "wb") as f:
        sf.write(f, tone(rate), rate, format="WAV")  # soundfile cannot encode such a name itself
    if fifo:
        os.mkfifo(add("fifo", "a FIFO (named pipe): opening it would wait for a writer forever"))
    add("directory", "a folder named like a WAV file").mkdir()
    loop = add("symlink_loop", "a symlink to itself")
    os.symlink(loop.name, loop)
    os.symlink("no_such_target.wav", add("dangling_link", "a symlink to a missing file"))
    return corpus


@dataclass(frozen=True)
class BadModel:
    name: str
    path: Path  # the model folder
    problem: str
    names: str  # the file the error must name (config.json, model.safetensors or the folder)


def make_bad_models(folder, good) -> list[BadModel]:
    """Copies of the model folder `good`, each broken one way, written under `folder`/models/."""
    folder = Path(folder) / "models"
    folder.mkdir(parents=True, exist_ok=True)
    corpus = []
    good_config = json.loads((Path(good) / "config.json").read_text())

    def add(name: str, problem: str, names: str = "config.json") -> Path:
        path = folder / name
        shutil.copytree(good, path)
        corpus.append(BadModel(name, path, problem, names))
        return path

    def with_config(name: str, problem: str, **fields) -> None:
        meta = json.loads(json.dumps(good_config))
        meta["config"].update(fields)
        (add(name, problem) / "config.json").write_text(json.dumps(meta))

    corpus.append(BadModel("missing_folder", folder / "no_such_model", "no such folder", "no_such_model"))
    (add("no_config", "config.json missing") / "config.json").unlink()
    (add("no_weights", "model.safetensors missing", "model.safetensors") / "model.safetensors").unlink()
    (add("config_not_json", "config.json is not JSON") / "config.json").write_text("{labels: yes")
    (add("config_a_list", "config.json is JSON but not an object") / "config.json").write_text("[1, 2]")
    (add("config_nested", "config.json nested 100,000 deep") / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    (add("config_huge", "a 2 MB config.json") / "config.json").write_text(" " * (2 << 20))
    config_dir = add("config_a_folder", "config.json is a folder") / "config.json"
    config_dir.unlink()
    config_dir.mkdir()
    with_config("depth_huge", "depth 1,000,000 (would allocate until memory runs out)", depth=1_000_000)
    with_config("d_model_huge", "d_model 1,000,000", d_model=1_000_000)
    with_config("d_model_bool", "d_model true", d_model=True)
    with_config("d_model_fraction", "d_model 48.5", d_model=48.5)
    with_config("labels_string", "labels a string, not a list", labels="abcdefghijkl")
    with_config("input_std_nan", "a NaN input normalization", input_std=float("nan"))
    with_config("larger_than_weights", "a config the weights do not match", d_model=4096, depth=64)
    weights = Path(good) / "model.safetensors"
    (add("weights_truncated", "model.safetensors cut short", "model.safetensors") / "model.safetensors") \
        .write_bytes(weights.read_bytes()[:100])
    (add("weights_pickle", "a pickle named model.safetensors", "model.safetensors") / "model.safetensors") \
        .write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    from safetensors.numpy import load_file, save_file  # numpy: this module stays free of torch

    tensors = load_file(weights)
    key = sorted(tensors)[0]
    tensors[key] = np.full_like(tensors[key], np.nan)
    save_file(tensors, add("weights_nan", "NaN weights", "model.safetensors") / "model.safetensors")
    return corpus


@contextmanager
def fifo_guard(path):
    """Yields a list that is non-empty once something opened the FIFO `path` for reading.

    A reader blocked on a FIFO waits for a writer; this thread keeps trying to open the write end without blocking,
    which succeeds only while a reader is waiting. It then records the fact and closes the write end, so that the
    reader sees end-of-file and the code under test goes on (and fails the test) instead of hanging."""
    opened: list[bool] = []
    done = threading.Event()

    def watch():
        while not done.wait(0.05):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader
                continue
            opened.append(True)
            os.close(fd)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        done.set()
        thread.join()
