"""mrconv-audio: keyword spotting on raw audio with reparameterized multi-resolution convolutions (MRConv)."""
from .model import MRConvClassifier, MRConvConfig

__version__ = "0.1.0"
__all__ = ["MRConvClassifier", "MRConvConfig", "__version__"]
