"""tailsynth: long-tailed image recognition with synthetic tail images from adapted, guided diffusion."""
__version__ = "0.1.0"
