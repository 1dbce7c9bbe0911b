"""tailsynth: long-tailed image recognition with synthetic tail images from adapted, guided diffusion."""
__version__ = "0.1.0"


def load(run_dir, device: str = "auto"):
    """Load a trained classifier: ``tailsynth.load(run_dir).predict(images)`` (see :mod:`tailsynth.api`)."""
    from .api import load as _load
    return _load(run_dir, device)
