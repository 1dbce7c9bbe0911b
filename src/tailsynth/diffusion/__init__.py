"""Diffusion layer: backends behind one denoiser protocol, schedules, explicit-loop samplers, the denoiser
training loop and LoRA adaptation on the tail (LoGex §2-3)."""
from .backend import BACKENDS, DiffusionBackend
from .config import DiffusionConfig
from .lora import (LoraAdaptConfig, LoraResult, LoraTrainConfig, adapt_lora, adapter_parameters, attach_lora, load_lora,
                   merge_and_unload, save_lora)
from .pixel import PixelBackend, PixelBackendConfig
from .samplers import (SampleOutput, ddim_sample, ddim_update, ddpm_sample, guided_eps, initial_noise,
                       sample_images)
from .schedule import (add_noise, alpha_at, ddim_timesteps, make_alphas_cumprod, predict_x0, prev_timestep)
from .sd import SDBackend, SDBackendConfig
from .tiny_sd import build_tiny_sd_pipeline
from .train import DenoiserTrainConfig, TrainResult, fit_denoiser, train_denoiser


def build_backend(name: str, cfg: dict, seed: int = 0):
    """A backend by registered name ("pixel", "sd") from its config mapping."""
    return BACKENDS.get(name)(cfg, seed=seed)


__all__ = [
    "BACKENDS", "DiffusionBackend", "DiffusionConfig", "build_backend",
    "PixelBackend", "PixelBackendConfig", "SDBackend", "SDBackendConfig", "build_tiny_sd_pipeline",
    "make_alphas_cumprod", "ddim_timesteps", "prev_timestep", "alpha_at", "predict_x0", "add_noise",
    "SampleOutput", "ddim_sample", "ddim_update", "ddpm_sample", "guided_eps", "initial_noise", "sample_images",
    "DenoiserTrainConfig", "TrainResult", "fit_denoiser", "train_denoiser",
    "LoraAdaptConfig", "LoraTrainConfig", "LoraResult", "attach_lora", "adapter_parameters", "adapt_lora", "save_lora", "load_lora",
    "merge_and_unload",
]
