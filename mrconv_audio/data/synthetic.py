"""Synthetic speakers: spoken words from espeak-ng voices, written in the Speech Commands layout.

For augmentation only (`mrconv-audio train --extra-train DIR`); accuracy is always measured on real recordings.
Every clip is 1 s at 16 kHz, 16-bit PCM, the word placed at a random offset like the release's clips. The folder
has empty split lists, so the loader reads all of it as training data; synthesis.json records how it was made.

    <out>/<word>/<voice>-<variant>-s<speed>-p<pitch>_nohash_<n>.wav
"""
from __future__ import annotations

import io
import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ..model import SC35_LABELS
from .audio import resample
from .speech_commands import KWS_WORDS, LIST_FILES, DataError

RATE = 16000
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = tuple(f"m{i}" for i in range(1, 8)) + tuple(f"f{i}" for i in range(1, 6)) + ("klatt", "klatt2", "croak")
SPEEDS = (110, 220)  # words per minute (espeak-ng's default is 175)
PITCHES = (20, 80)  # espeak-ng's 0-99 scale (default 50)
NOT_INSTALLED = "espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)"


def espeak(word: str, voice: str, variant: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """One spoken word as float32 mono and its sample rate (espeak-ng's native 22,050 Hz)."""
    command = ["espeak-ng", "-v", f"{voice}+{variant}", "-s", str(speed), "-p", str(pitch), "--stdout", word]
    try:
        wav = subprocess.run(command, capture_output=True, check=True, timeout=30).stdout
    except FileNotFoundError:
        raise DataError(NOT_INSTALLED) from None
    except subprocess.CalledProcessError as e:
        raise DataError(f"espeak-ng failed for {word!r} with voice {voice}+{variant}: {e.stderr.decode()[:200]}") from None
    x, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return x, rate


def place_in_second(x: np.ndarray, rng: random.Random, peak: float) -> np.ndarray | None:
    """Trim the silence around the word, scale it to `peak` and put it at a random offset in 1 s (None: too long)."""
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max()) if len(x) and np.abs(x).max() > 0 else []
    if len(loud) == 0:
        return None
    word = x[loud[0] : loud[-1] + 1]
    if len(word) > RATE:
        return None
    out = np.zeros(RATE, np.float32)
    start = rng.randrange(0, RATE - len(word) + 1)
    out[start : start + len(word)] = word * (peak / np.abs(word).max())
    return out


def synthesize(out, per_keyword: int = 100, per_other_word: int = 10, seed: int = 0, log=print) -> dict:
    """Write `per_keyword` clips of each of the 10 keywords and `per_other_word` of each other Speech Commands word
    (for the _unknown_ class). Returns the summary also written to out/synthesis.json."""
    if shutil.which("espeak-ng") is None:
        raise DataError(NOT_INSTALLED)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: folder is not empty; choose a new --out")
    rng = random.Random(seed)
    counts = {w: per_keyword if w in KWS_WORDS else per_other_word for w in SC35_LABELS}
    written, too_long = {}, 0
    for word, count in counts.items():
        (out / word).mkdir(parents=True, exist_ok=True)
        n = 0
        for _ in range(count * 2):  # a few draws are too long for 1 s (slow voices): draw again
            if n == count:
                break
            voice, variant = rng.choice(VOICES), rng.choice(VARIANTS)
            speed, pitch = rng.randint(*SPEEDS), rng.randint(*PITCHES)
            x, rate = espeak(word, voice, variant, speed, pitch)
            clip = place_in_second(resample(torch.from_numpy(x), rate, RATE).numpy(), rng, rng.uniform(0.1, 0.9))
            if clip is None:
                too_long += 1
                continue
            speaker = f"{voice}-{variant}-s{speed}-p{pitch}"
            sf.write(out / word / f"{speaker}_nohash_{n}.wav", clip, RATE, subtype="PCM_16")
            n += 1
        written[word] = n
    for list_file in LIST_FILES.values():  # empty: every clip is training data
        (out / list_file).write_text("")
    summary = {"source": "espeak-ng", "voices": VOICES, "variants": VARIANTS, "speeds_wpm": SPEEDS,
               "pitches": PITCHES, "seed": seed, "sample_rate": RATE, "clips": written, "too_long_redrawn": too_long}
    (out / "synthesis.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"wrote {sum(written.values())} synthetic clips to {out}")
    return summary
