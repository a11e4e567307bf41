"""Local Speech Commands roots in the release's layout, and the sc35 / kws12 tasks built from them.

    <root>/<word>/<speaker>_nohash_<n>.wav|.flac   one folder per word
    <root>/_background_noise_/*.wav                noise recordings (or 1 s slices of them): the _silence_ class
    <root>/validation_list.txt, testing_list.txt    the split lists; every clip not listed is training

Several roots can be read as one (e.g. the subset and the extra speakers): their splits are joined, each clip keeps
its root's split, and background noise comes from every root that has some. Versions v0.02 (35 words) and v0.01
(30 words) share the layout.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..inputfile import file_problem, name_problem, shown
from ..model import SC35_LABELS
from .audio import AudioError, load_audio

KWS_WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
SILENCE, UNKNOWN = "_silence_", "_unknown_"
NOISE_FOLDER = "_background_noise_"
TASKS = {"sc35": list(SC35_LABELS), "kws12": KWS_WORDS + [SILENCE, UNKNOWN]}
SPLITS = ("train", "validation", "test")
LIST_FILES = {"validation": "validation_list.txt", "test": "testing_list.txt"}
AUDIO_SUFFIXES = (".wav", ".flac")
V2_ONLY_WORDS = {"backward", "follow", "forward", "learn", "visual"}
# The release's background noise is 6 recordings (dishes, cat, exercise bike, pink and white noise, running tap).
NOISE_RECORDINGS = 6
LONG_NOISE_SECONDS = 2.0  # a noise file longer than this is a recording of its own; shorter ones are slices
MAX_NOISE_SECONDS = 600  # noise files are read whole to be checked: longer ones are refused (the release's: 95 s)


class DataError(ValueError):
    """A Speech Commands root that cannot be used, with the file or folder named."""


@dataclass(frozen=True)
class Example:
    path: str  # the file, e.g. "/data/sc/yes/0a7c2a8d_nohash_0.wav"
    label: str  # the task's class name
    offset: int = 0  # first sample to read (noise segments); clips start at 0
    frames: int = -1  # samples to read; -1 = the whole file


def task_labels(task: str) -> list[str]:
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return list(TASKS[task])


def read_list(path: Path) -> list[str]:
    """A split list: one relative clip path per line (blank lines ignored)."""
    if not path.is_file():
        raise DataError(f"{path}: missing (a Speech Commands root holds {' and '.join(LIST_FILES.values())})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    entries = [line.strip().replace("\\", "/") for line in text.splitlines() if line.strip()]
    for entry in entries:
        if not entry.endswith(AUDIO_SUFFIXES) or entry.count("/") != 1:
            raise DataError(f"{path}: entry {entry!r} is not of the form <word>/<file>.wav (or .flac)")
    return entries


def _spectral_shape(x: np.ndarray) -> np.ndarray:
    """Mean log power spectrum of a noise file's samples, level removed: what tells one noise recording from
    another."""
    frames = x[: len(x) // 400 * 400].reshape(-1, 400) * np.hanning(400)
    shape = np.log(np.square(np.abs(np.fft.rfft(frames, axis=1))).mean(0) + 1e-10)
    return shape - shape.mean()


def group_by_shape(shapes: np.ndarray, groups: int, iterations: int = 50) -> np.ndarray:
    """Deterministic k-means (farthest-point start from row 0): a group index per row."""
    centres = [shapes[0]]
    while len(centres) < min(groups, len(shapes)):
        distance = np.min([np.square(shapes - c).sum(1) for c in centres], axis=0)
        centres.append(shapes[int(np.argmax(distance))])
    centres = np.stack(centres)
    for _ in range(iterations):
        assign = np.argmin(np.square(shapes[:, None] - centres[None]).sum(-1), axis=1)
        moved = np.stack([shapes[assign == g].mean(0) if (assign == g).any() else centres[g]
                          for g in range(len(centres))])
        if np.allclose(moved, centres):
            break
        centres = moved
    return assign


def assign_sources(sizes: dict[str, int]) -> dict[str, str]:
    """Give each noise source (a recording) to one split: the two whose sizes are nearest 10% of all the noise go to
    validation and test, the rest train. Ties by name."""
    if len(sizes) < 3:
        return {name: "train" for name in sizes}
    target = 0.1 * sum(sizes.values())
    order = sorted(sizes, key=lambda name: (abs(sizes[name] - target), name))
    return {name: "validation" if name == order[0] else "test" if name == order[1] else "train" for name in sizes}


class SpeechCommands:
    def __init__(self, roots):
        roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
        if not roots:
            raise DataError("no Speech Commands folder given")
        self.roots = [Path(r) for r in roots]
        if len({r.resolve() for r in self.roots}) < len(self.roots):
            raise DataError(f"the same Speech Commands folder is given twice: {[str(r) for r in self.roots]}")
        self.warnings: list[str] = []
        self.skipped: list[dict] = []  # files of the tree refused before any split is built: {"path", "reason"}
        self.clips: dict[str, list[str]] = {}  # word -> sorted file paths (every root)
        self._split: dict[str, str] = {}  # file path -> validation | test (the rest train)
        for root in self.roots:
            if not root.is_dir():
                raise DataError(f"{root}: no such Speech Commands folder")
            for split, name in LIST_FILES.items():
                self._split.update({str(root / entry): split for entry in read_list(root / name)})
            found = False
            for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != NOISE_FOLDER):
                if folder.name.startswith("."):
                    continue
                if problem := name_problem(folder):
                    self._skip(folder, f"label folder skipped: {problem}")
                    continue
                files = []
                for f in sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES):
                    if problem := file_problem(f):  # a FIFO, a folder, a broken link, a name that is not UTF-8
                        self._skip(f, f"clip skipped: {problem}")
                    else:
                        files.append(str(f))
                if files:
                    self.clips.setdefault(folder.name, []).extend(files)
                    found = True
                else:
                    self.warnings.append(f"{folder}: label folder with no .wav or .flac clips, skipped")
            if not found:
                raise DataError(f"{root}: no <word>/*.wav or <word>/*.flac clips found")
        self.version = "0.02" if V2_ONLY_WORDS & set(self.clips) else "0.01"
        self._noise: dict[str, list[Example]] | None = None

    def _skip(self, path: Path, reason: str) -> None:
        self.skipped.append({"path": shown(path), "reason": f"{shown(path)}: {reason}"})

    @property
    def words(self) -> list[str]:
        return sorted(self.clips)

    def split_of(self, path: str) -> str:
        return self._split.get(str(path), "train")

    def word_clips(self, split: str) -> list[tuple[str, str]]:
        """(file path, word) for every clip of a split."""
        _check_split(split)
        return [(p, word) for word, paths in sorted(self.clips.items()) for p in paths if self.split_of(p) == split]

    def noise_segments(self, split: str) -> list[Example]:
        """1 s segments of the background noise whose source recording belongs to `split`, labelled _silence_.

        A source recording's segments all go to one split, so no noise heard in training (as _silence_ or as
        augmentation) is heard again in validation or test. Long files are recordings; 1 s slices (as in the
        subset) carry no source name, so they are grouped into NOISE_RECORDINGS sources by spectral shape.
        """
        _check_split(split)
        if self._noise is None:
            self._noise = self._split_noise()
        return list(self._noise[split])

    def _split_noise(self) -> dict[str, list[Example]]:
        segments: dict[str, list[Example]] = {}  # source -> its segments
        slices: list[tuple[Path, int]] = []
        shapes = []
        for root in self.roots:
            for path in sorted((root / NOISE_FOLDER).glob("*.wav")):
                # Read whole, with the checks every clip gets (regular file, readable, samples, NaN/Inf): a bad noise
                # file would otherwise train as _silence_.
                try:
                    x, rate = load_audio(path, max_seconds=MAX_NOISE_SECONDS)
                except AudioError as e:  # its message starts with the file's name
                    self.skipped.append({"path": shown(path), "reason": f"{e} (background noise, skipped)"})
                    continue
                length = rate  # 1 s segments
                if len(x) > LONG_NOISE_SECONDS * rate:
                    segments[str(path)] = [Example(str(path), SILENCE, i * length, length)
                                           for i in range(len(x) // length)]
                else:
                    slices.append((path, min(len(x), length)))
                    shapes.append(_spectral_shape(x))
        if slices:
            groups = group_by_shape(np.stack(shapes), NOISE_RECORDINGS)
            for (path, frames), group in zip(slices, groups):
                segments.setdefault(f"slices-{group}", []).append(Example(str(path), SILENCE, 0, frames))
        splits = assign_sources({source: len(segs) for source, segs in segments.items()})
        noise = {split: [] for split in SPLITS}
        for source, segs in sorted(segments.items()):
            noise[splits[source]].extend(segs)
        return noise

    def examples(self, task: str, split: str, seed: int = 0, silence_fraction=0.1,
                 unknown_fraction: float | None = 0.1) -> list[Example]:
        """The examples of a task's split, in a fixed order.

        sc35: every clip of the 35 words. kws12: every clip of the 10 keywords, plus _unknown_ clips drawn from the
        other words and _silence_ segments of background noise, each about 10% of the keyword count (the customary
        balance of TensorFlow's speech_commands recipe); unknown_fraction=None takes every other-word clip.
        """
        labels = task_labels(task)
        clips = self.word_clips(split)
        if task == "sc35":
            return [Example(p, w) for p, w in clips if w in labels]
        rng = random.Random(f"{seed}:{split}")
        keywords = [Example(p, w) for p, w in clips if w in KWS_WORDS]
        others = [Example(p, UNKNOWN) for p, w in clips if w not in KWS_WORDS]
        rng.shuffle(others)
        unknown = others if unknown_fraction is None else others[: math.ceil(unknown_fraction * len(keywords))]
        silence = []
        noise = self.noise_segments(split)
        if noise:
            rng.shuffle(noise)
            n_silence = math.ceil(silence_fraction * len(keywords))
            silence = [noise[i % len(noise)] for i in range(n_silence)]
        elif silence_fraction > 0:
            self.warnings.append(f"{', '.join(str(r / NOISE_FOLDER) for r in self.roots)}: no background noise "
                                 f"for the {split} split's _silence_")
        return keywords + unknown + silence


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
