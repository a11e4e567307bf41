"""save_pretrained / load_pretrained: `model.safetensors` + `config.json`, never pickle.

config.json holds the model config (labels, sample rate, input normalization among its fields) and whether the
weights are in merged (reparameterized) form. Every failure names the file and what is wrong with it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .atomic import atomic_write
from .kernels import FourierKernel
from .model import MRConvClassifier, MRConvConfig

FORMAT = "mrconv-audio"
FORMAT_VERSION = 2  # 2: Fourier modes stored at unit scale (kernels.FourierKernel.scale applied in forward)
READABLE_VERSIONS = (1, 2)
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
MAX_CONFIG_BYTES = 1 << 20
SAFETENSORS_DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64}
# The weights' floating-point type, recorded as "dtype" (Hugging Face's torch_dtype); absent means float32.
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CheckpointError(ValueError):
    """A checkpoint folder or file is missing, unreadable or does not match the model it describes."""


def save_pretrained(model: MRConvClassifier, directory, extra: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    dtypes = {str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.is_floating_point()}
    if len(dtypes) != 1 or not dtypes <= set(DTYPES):
        raise CheckpointError(f"cannot save a model whose weights mix floating-point types {sorted(dtypes)}")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "reparameterized": model.reparameterized,
        "dtype": dtypes.pop(),
        "config": model.config.to_dict(),
        **(extra or {}),
    }
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    return directory


def read_config(directory) -> dict:
    """The parsed, validated config.json of a checkpoint folder."""
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise CheckpointError(f"{directory}: no such model folder")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes, more than a config.json holds ({MAX_CONFIG_BYTES})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: field 'format' must be {FORMAT!r}, got {meta.get('format') if isinstance(meta, dict) else meta!r}")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path}: field 'format_version' must be one of {READABLE_VERSIONS}, "
                              f"got {meta.get('format_version')!r}")
    if meta.setdefault("dtype", "float32") not in DTYPES:
        raise CheckpointError(f"{path}: field 'dtype' must be one of {sorted(DTYPES)}, got {meta['dtype']!r}")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path}: field 'config' must be an object")
    try:
        meta["config"] = MRConvConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: field 'config': {e}") from None
    return meta


def expected_tensors(meta: dict) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor the config describes, from a model built on the meta device (no
    memory): checked against the weights file before a real model of that size is allocated."""
    with torch.device("meta"):
        skeleton = MRConvClassifier(meta["config"]).to(DTYPES[meta["dtype"]])
        if meta.get("reparameterized"):
            skeleton.reparameterize()
    return {name: (tuple(t.shape), t.dtype) for name, t in skeleton.state_dict().items()}


def check_weights_file(path: Path, expected: dict) -> None:
    """The safetensors header (names, shapes, dtypes) against `expected`, without reading the tensors."""
    try:
        with safe_open(path, framework="pt") as f:
            found = {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({e})") from None
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not match {CONFIG_NAME}: missing tensors {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected tensors {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for name in sorted(found):
        shape, dtype = found[name]
        if shape != expected[name][0] or SAFETENSORS_DTYPES.get(dtype) != expected[name][1]:
            raise CheckpointError(
                f"{path}: tensor {name!r} is {shape} {SAFETENSORS_DTYPES.get(dtype, dtype)}, "
                f"the config expects {expected[name][0]} {expected[name][1]}"
            )


def load_pretrained(directory, map_location="cpu") -> MRConvClassifier:
    meta = read_config(directory)
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    check_weights_file(path, expected_tensors(meta))
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({e})") from None
    for name, tensor in sorted(tensors.items()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or infinite values")
    model = MRConvClassifier(meta["config"]).to(DTYPES[meta["dtype"]])
    if meta.get("reparameterized"):
        model.reparameterize()
    else:
        model.eval()
    if meta["format_version"] == 1:  # version 1 stored Fourier modes multiplied by their kernel's scale
        for name, module in model.named_modules():
            if isinstance(module, FourierKernel):
                tensors[f"{name}.modes"] = tensors[f"{name}.modes"] / module.scale
    model.load_state_dict(tensors)
    return model.to(map_location)
