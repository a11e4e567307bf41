"""Where the shipped model lives (no torch: the light runtime finds it too)."""
from __future__ import annotations

from pathlib import Path


def default_model_dir() -> Path:
    """The shipped model: mrconv_audio/shipped/kws12-mrconv in an installed package (wheel, `pip install .`),
    else models/kws12-mrconv next to the package in a source checkout (`pip install -e .`, PYTHONPATH)."""
    package = Path(__file__).resolve().parent
    candidates = [package / "shipped" / "kws12-mrconv", package.parent / "models" / "kws12-mrconv"]
    return next((path for path in candidates if (path / "config.json").is_file()), candidates[-1])
