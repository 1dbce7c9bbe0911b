"""tailsynth: long-tailed image recognition with synthetic tail images from adapted, guided diffusion."""
from .version import __version__

__all__ = ["__version__", "load"]


def load(run_dir=None, device: str = "auto", **by_name):
    """Load a trained classifier: ``tailsynth.load(run_dir).predict(images)``, or by name:
    ``tailsynth.load(runs="runs", experiment="demo", method="logex", seed=0)`` (see :func:`tailsynth.api.load`)."""
    from .api import load as _load
    return _load(run_dir, device, **by_name)
