"""tailsynth: long-tailed image recognition with synthetic tail images from adapted, guided diffusion."""
from .version import __version__

__all__ = ["__version__", "load"]


def load(run_dir, device: str = "auto"):
    """Load a trained classifier: ``tailsynth.load(run_dir).predict(images)`` (see :mod:`tailsynth.api`)."""
    from .api import load as _load
    return _load(run_dir, device)
