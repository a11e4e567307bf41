"""Build a tiny Speech Commands tree for tests: one tone pattern per word, a few "speakers", real WAV files,
list files and background noise, in the release's layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]


def word_audio(word_index: int, speaker: int, rng: np.random.Generator, rate: int, seconds: float) -> np.ndarray:
    """A word is a tone with a pitch that depends on the word, placed at a speaker-dependent time."""
    n = int(rate * seconds)
    t = np.arange(n) / rate
    freq = 220.0 * 1.19 ** word_index * (1 + 0.02 * (speaker % 3))
    start, length = 0.15 + 0.1 * rng.random(), 0.5
    envelope = np.clip((t - start) / 0.05, 0, 1) * np.clip((start + length - t) / 0.05, 0, 1)
    x = 0.5 * envelope * (np.sin(2 * np.pi * freq * t) + 0.3 * np.sin(4 * np.pi * freq * t))
    return (x + 0.01 * rng.standard_normal(n)).astype(np.float32)


def make_speech_commands(root, words=None, speakers=6, clips_per_speaker=1, rate=16000, seconds=1.0,
                         noise_files=3, seed=0, suffix=".wav", first_speaker=0) -> Path:
    """Speakers first_speaker and first_speaker + 1 go to the validation and testing lists; the rest train.
    Clips are written as `suffix` (.wav or .flac); noise_files long noise recordings (0 for none)."""
    root = Path(root)
    words = list(words or KEYWORDS + ["bed", "cat"])
    rng = np.random.default_rng(seed)
    lists = {"validation": [], "test": []}
    for w, word in enumerate(words):
        (root / word).mkdir(parents=True, exist_ok=True)
        for s in range(first_speaker, first_speaker + speakers):
            for c in range(clips_per_speaker):
                rel = f"{word}/{s:08x}_nohash_{c}{suffix}"
                sf.write(root / rel, word_audio(w, s, rng, rate, seconds), rate, subtype="PCM_16")
                if s == first_speaker:
                    lists["validation"].append(rel)
                elif s == first_speaker + 1:
                    lists["test"].append(rel)
    (root / "validation_list.txt").write_text("\n".join(lists["validation"]) + "\n")
    (root / "testing_list.txt").write_text("\n".join(lists["test"]) + "\n")
    if not noise_files:
        return root
    (root / "_background_noise_").mkdir(exist_ok=True)
    for i in range(noise_files):  # 12 s of noise each: ~24 one-second segments for _silence_
        noise = (0.05 * rng.standard_normal(12 * rate)).astype(np.float32)
        sf.write(root / "_background_noise_" / f"noise_{i}.wav", noise, rate, subtype="PCM_16")
    return root
