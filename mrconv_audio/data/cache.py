"""Preprocessing cache: each split decoded once into one int16 array file, memory-mapped afterwards.

A split's cache is keyed by a fingerprint of everything that shapes it (the examples, each source file's size and
modification time, the list files, the rate and clip length), so it is rebuilt when the source changes.
Clips that cannot be read are skipped, and their paths and reasons are kept in the cache's index.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..conditioning import fit_full_scale
from ..inputfile import file_problem, shown
from .audio import AudioError, fit_length, load_audio, resample
from .speech_commands import LIST_FILES, Example, SpeechCommands, task_labels

CACHE_VERSION = 2
MAX_CLIP_SECONDS = 60  # a clip is one word (1 s) cut to the clip length: a longer file is refused before decoding


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mrconv-audio"


@dataclass
class CachedSplit:
    audio: np.ndarray  # (N, length) int16, memory-mapped
    labels: np.ndarray  # (N,) int64 class indices
    label_names: list[str]
    paths: list[str]
    skipped: list[dict]  # [{"path": ..., "reason": ...}]
    sample_rate: int

    def __len__(self) -> int:
        return len(self.labels)

    def concat(self, other: "CachedSplit") -> "CachedSplit":
        """Both splits' examples in one (in memory), e.g. real clips plus synthetic ones."""
        if other.label_names != self.label_names or other.sample_rate != self.sample_rate:
            raise ValueError(f"cannot join splits of labels {other.label_names} at {other.sample_rate} Hz to "
                             f"labels {self.label_names} at {self.sample_rate} Hz")
        return CachedSplit(np.concatenate([self.audio, other.audio]), np.concatenate([self.labels, other.labels]),
                           self.label_names, self.paths + other.paths, self.skipped + other.skipped, self.sample_rate)

    def waveforms(self, index) -> torch.Tensor:
        """float32 waveforms in [-1, 1] for an index array: (len(index), length)."""
        return torch.from_numpy(self.audio[index].astype(np.float32) / 32768.0)


def _fingerprint(dataset: SpeechCommands, examples: list[Example], extra: dict) -> str:
    h = hashlib.sha256(json.dumps({"version": CACHE_VERSION, **extra}, sort_keys=True).encode())
    for root in dataset.roots:
        for name in LIST_FILES.values():
            st = (root / name).stat()
            h.update(f"{root / name}:{st.st_size}:{st.st_mtime_ns}".encode())
    seen = {}
    for ex in examples:
        if ex.path not in seen:
            try:
                st = Path(ex.path).stat()
                seen[ex.path] = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                seen[ex.path] = "missing"
        h.update(f"{ex.path}:{ex.label}:{ex.offset}:{ex.frames}:{seen[ex.path]}".encode())
    return h.hexdigest()[:20]


def read_example(ex: Example, sample_rate: int, length: int) -> np.ndarray:
    """One example as float32 at `sample_rate`, exactly `length` samples."""
    import soundfile as sf  # here, not at the top: reading a built cache needs only numpy

    if ex.frames > 0:  # a segment of a longer file (background noise, checked whole by SpeechCommands as well)
        if problem := file_problem(ex.path):
            raise AudioError(f"{shown(ex.path)}: {problem}")
        try:
            data, rate = sf.read(ex.path, start=ex.offset, frames=ex.frames, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise AudioError(f"{ex.path}: not a readable audio file ({e})") from None
        x = data.mean(axis=1)
        if not np.isfinite(x).all():
            raise AudioError(f"{ex.path}: contains NaN or infinite samples")
    else:
        x, rate = load_audio(ex.path, max_seconds=MAX_CLIP_SECONDS)
    # A float file beyond full scale (integer PCM stored as float) is scaled back as the apps do, not clipped into
    # the int16 cache as a square wave.
    x, _ = fit_full_scale(np.ascontiguousarray(x, dtype=np.float32))
    return fit_length(resample(torch.from_numpy(np.ascontiguousarray(x)), rate, sample_rate), length).numpy()


def load_split(
    dataset: SpeechCommands,
    task: str,
    split: str,
    sample_rate: int = 16000,
    clip_seconds: float = 1.0,
    cache_dir=None,
    seed: int = 0,
    log=print,
    silence_fraction: float = 0.1,
    unknown_fraction: float | None = 0.1,
) -> CachedSplit:
    labels = task_labels(task)
    examples = dataset.examples(task, split, seed=seed, silence_fraction=silence_fraction,
                                unknown_fraction=unknown_fraction)
    length = round(sample_rate * clip_seconds)
    extra = {"roots": [str(r.resolve()) for r in dataset.roots], "task": task, "split": split, "rate": sample_rate,
             "length": length, "seed": seed, "silence_fraction": silence_fraction, "unknown_fraction": unknown_fraction}
    key = _fingerprint(dataset, examples, extra)
    folder = Path(cache_dir or default_cache_dir())
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"{task}-{split}-{sample_rate}-{key}"
    index_path, audio_path = stem.with_suffix(".json"), stem.with_suffix(".npy")
    cached = _open(index_path, audio_path, length) if index_path.is_file() and audio_path.is_file() else None
    if isinstance(cached, str):
        log(f"warning: {cached}; rebuilding it")
    if not isinstance(cached, tuple):
        log(f"caching {task}/{split} at {sample_rate} Hz: {len(examples)} examples -> {audio_path}")
        _build(examples, labels, sample_rate, length, index_path, audio_path)
        cached = _open(index_path, audio_path, length)
        if isinstance(cached, str):
            raise OSError(f"the cache just written is unreadable: {cached}")
    index, audio = cached
    return CachedSplit(audio, np.asarray(index["labels"], dtype=np.int64), labels, index["paths"],
                       index["skipped"], sample_rate)


def _open(index_path: Path, audio_path: Path, length: int):
    """(index, memory-mapped audio) of a cache entry, or a message naming the file and what is wrong with it
    (truncated, foreign or pickled .npy, corrupt index): such an entry is rebuilt, never trusted."""
    try:
        index = json.loads(index_path.read_text())
        labels, paths, skipped = index["labels"], index["paths"], index["skipped"]
        if not (isinstance(labels, list) and isinstance(paths, list) and len(labels) == len(paths)):
            raise ValueError("labels and paths must be lists of one length")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        return f"cache index {index_path} is unreadable ({type(e).__name__}: {e})"
    try:
        audio = np.load(audio_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        return f"cache file {audio_path} is unreadable ({e})"
    expected = (len(labels), length)
    if not isinstance(audio, np.ndarray) or audio.dtype != np.int16 or audio.shape != expected:
        got = f"{audio.dtype} {audio.shape}" if isinstance(audio, np.ndarray) else type(audio).__name__
        return f"cache file {audio_path} holds {got}, expected int16 {expected}"
    return index, audio


def _build(examples, labels, sample_rate, length, index_path: Path, audio_path: Path) -> None:
    rows, kept, skipped = [], [], []
    for ex in examples:
        try:
            x = read_example(ex, sample_rate, length)
        except AudioError as e:
            skipped.append({"path": ex.path, "reason": str(e)})
            continue
        rows.append(np.round(np.clip(x, -1.0, 32767 / 32768) * 32768).astype(np.int16))
        kept.append(ex)
    audio = np.stack(rows) if rows else np.zeros((0, length), np.int16)
    def save_audio(tmp):
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a bare temporary name
            np.save(f, audio)

    atomic_write(audio_path, save_audio)
    index = {"labels": [labels.index(ex.label) for ex in kept], "paths": [ex.path for ex in kept],
             "skipped": skipped}
    atomic_write(index_path, lambda tmp: Path(tmp).write_text(json.dumps(index)))
