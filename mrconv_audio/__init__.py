"""mrconv-audio: keyword spotting on raw audio with reparameterized multi-resolution convolutions (MRConv)."""
__version__ = "0.1.0"
__all__ = ["MRConvClassifier", "MRConvConfig", "__version__"]


def __getattr__(name):
    # Imported on first use, not with the package: `mrconv-audio --help` must not wait for torch.
    if name in ("MRConvClassifier", "MRConvConfig"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'mrconv_audio' has no attribute {name!r}")
