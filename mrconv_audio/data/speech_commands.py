"""A local Speech Commands root in the release's layout, and the sc35 / kws12 tasks built from it.

    <root>/<word>/<speaker>_nohash_<n>.wav      one folder per word
    <root>/_background_noise_/*.wav              noise: cut into 1 s segments for the _silence_ class
    <root>/validation_list.txt, testing_list.txt  the split lists; every clip not listed is training

Versions v0.02 (35 words) and v0.01 (30 words) share the layout.
"""
from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from ..model import SC35_LABELS

KWS_WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
SILENCE, UNKNOWN = "_silence_", "_unknown_"
NOISE_FOLDER = "_background_noise_"
TASKS = {"sc35": list(SC35_LABELS), "kws12": KWS_WORDS + [SILENCE, UNKNOWN]}
SPLITS = ("train", "validation", "test")
LIST_FILES = {"validation": "validation_list.txt", "test": "testing_list.txt"}
V2_ONLY_WORDS = {"backward", "follow", "forward", "learn", "visual"}


class DataError(ValueError):
    """A Speech Commands root that cannot be used, with the file or folder named."""


@dataclass(frozen=True)
class Example:
    path: str  # relative to the root, e.g. "yes/0a7c2a8d_nohash_0.wav"
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
    entries = [line.strip().replace("\\", "/") for line in path.read_text().splitlines() if line.strip()]
    for entry in entries:
        if not entry.endswith(".wav") or entry.count("/") != 1:
            raise DataError(f"{path}: entry {entry!r} is not of the form <word>/<file>.wav")
    return entries


def _noise_split(name: str, index: int) -> str:
    """Stable 80/10/10 split of background-noise segments (the lists don't cover them)."""
    bucket = zlib.crc32(f"{name}:{index}".encode()) % 10
    return "validation" if bucket == 0 else "test" if bucket == 1 else "train"


class SpeechCommands:
    def __init__(self, root):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such Speech Commands folder")
        self.lists = {split: set(read_list(self.root / name)) for split, name in LIST_FILES.items()}
        self.warnings: list[str] = []
        self.clips: dict[str, list[str]] = {}  # word -> sorted relative paths
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name != NOISE_FOLDER):
            if folder.name.startswith("."):
                continue
            wavs = sorted(f"{folder.name}/{f.name}" for f in folder.glob("*.wav"))
            if wavs:
                self.clips[folder.name] = wavs
            else:
                self.warnings.append(f"{folder}: label folder with no .wav clips, skipped")
        if not self.clips:
            raise DataError(f"{self.root}: no <word>/*.wav clips found")
        self.version = "0.02" if V2_ONLY_WORDS & set(self.clips) else "0.01"

    @property
    def words(self) -> list[str]:
        return sorted(self.clips)

    def split_of(self, relpath: str) -> str:
        for split, entries in self.lists.items():
            if relpath in entries:
                return split
        return "train"

    def word_clips(self, split: str) -> list[tuple[str, str]]:
        """(relative path, word) for every clip of a split."""
        _check_split(split)
        return [(p, word) for word, paths in self.clips.items() for p in paths if self.split_of(p) == split]

    def noise_segments(self, split: str, seconds: float = 1.0) -> list[Example]:
        """1 s segments of the background-noise files that fall in `split`, labelled _silence_."""
        _check_split(split)
        segments = []
        for path in sorted((self.root / NOISE_FOLDER).glob("*.wav")):
            try:
                info = sf.info(str(path))
            except (sf.LibsndfileError, RuntimeError) as e:
                self.warnings.append(f"{path}: unreadable background noise, skipped ({e})")
                continue
            length = round(seconds * info.samplerate)
            for index in range(max(info.frames // length, 1 if info.frames > 0 else 0)):
                if _noise_split(path.name, index) == split:
                    segments.append(Example(f"{NOISE_FOLDER}/{path.name}", SILENCE, index * length, length))
        return segments

    def examples(self, task: str, split: str, seed: int = 0, silence_fraction=0.1, unknown_fraction=0.1) -> list[Example]:
        """The examples of a task's split, in a fixed order.

        sc35: every clip of the 35 words. kws12: every clip of the 10 keywords, plus _unknown_ clips drawn from the
        other words and _silence_ segments of background noise, each about 10% of the keyword count (the customary
        balance of TensorFlow's speech_commands recipe).
        """
        labels = task_labels(task)
        clips = self.word_clips(split)
        if task == "sc35":
            return [Example(p, w) for p, w in clips if w in labels]
        rng = random.Random(f"{seed}:{split}")
        keywords = [Example(p, w) for p, w in clips if w in KWS_WORDS]
        others = [Example(p, UNKNOWN) for p, w in clips if w not in KWS_WORDS]
        rng.shuffle(others)
        unknown = others[: math.ceil(unknown_fraction * len(keywords))]
        silence = []
        noise = self.noise_segments(split)
        if noise:
            rng.shuffle(noise)
            n_silence = math.ceil(silence_fraction * len(keywords))
            silence = [noise[i % len(noise)] for i in range(n_silence)]
        elif silence_fraction > 0:
            self.warnings.append(f"{self.root / NOISE_FOLDER}: no background noise for the {split} split's _silence_")
        return keywords + unknown + silence


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
