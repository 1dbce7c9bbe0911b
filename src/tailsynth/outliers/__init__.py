"""Outlier embeddings in a diffusion model's conditioning space: Dream-OOD's low-likelihood sampling and BOOD's
boundary-crossing perturbation (stage 2 of both methods; :mod:`tailsynth.methods.dream_ood`)."""
from .decode import DecodeConfig
from .bood import BoodConfig, boundary_outliers, boundary_steps, perturb
from .dream_ood import DreamOodSamplingConfig, low_likelihood_outliers
from .knn import kth_nn_distance

__all__ = ["BoodConfig", "DecodeConfig", "DreamOodSamplingConfig", "boundary_outliers", "boundary_steps", "kth_nn_distance",
           "low_likelihood_outliers", "perturb"]
