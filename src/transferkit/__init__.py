"""transferkit: a folder of images in, a transfer-learned image classifier out."""

from transferkit import _env  # noqa: F401 - must run before TensorFlow is imported

__version__ = "0.1.0"
__all__ = ["ImageClassifier", "Prediction", "BACKBONES", "__version__"]


def __getattr__(name):
    # Imported lazily so `transferkit --help` does not pay TensorFlow's start-up.
    if name in ("ImageClassifier", "Prediction"):
        from transferkit import api

        return getattr(api, name)
    if name == "BACKBONES":
        from transferkit.modeling.backbones import BACKBONES

        return BACKBONES
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
