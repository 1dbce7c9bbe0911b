"""Seeded random Stable Diffusion 1.x folders with the real architectures (or a tiny one), written offline.

The folder has diffusers' ``save_pretrained`` layout (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), so :class:`~tailsynth.diffusion.sd.SDBackend` loads it
through the same code path as a downloaded model. The weights are untrained: the folder exercises shapes,
dtypes, memory and time at real size, never image quality.

Variants (every config is a literal below; nothing is downloaded):

* ``sd-1.4`` -- the component configs of CompVis/stable-diffusion-v1-4 (Rombach et al. 2022): UNet
  (320/640/1280/1280 channels, 2 layers per block, 8 heads, cross-attention width 768, 4 latent channels,
  64x64 latents; 859,520,964 parameters), VAE (128/256/512/512 channels, downsampling 8, 4 latent channels,
  scaling factor 0.18215; 83,653,863), CLIP ViT-L/14 text encoder (width 768, 12 layers, 12 heads, 77
  positions, vocabulary 49,408; 123,060,480) and SD-1.4's PNDM scheduler config (scaled-linear betas
  0.00085..0.012, 1000 steps, epsilon prediction).
* ``tiny`` -- the same layout at a few hundred thousand parameters for tests and CPU smoke runs: UNet
  (32, 64), cross-attention width 32; VAE with 2 levels (downsampling 2); 2-layer CLIP of width 32; the
  DDIM scheduler config with SD's betas.

The tokenizer is NOT CLIP's: its BPE vocabulary is not available offline. It is CLIP's byte-level BPE
tokenizer with a 514-token vocabulary (each of the 256 bytes alone and as a word end, plus
``<|startoftext|>``/``<|endoftext|>``) and no merges, ``model_max_length`` 77: every prompt still becomes
(1, 77) ids with BOS/EOS/padding as CLIP's, so the conditioning is (B, 77, D), but a word is several tokens
(one per byte) and ids >= 514 of the text encoder's table are never used. ``tailsynth-random.json`` in the
folder records the variant, seed and dtype.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import TailsynthError
from ..utils import atomic_write_json

RECORD = "tailsynth-random.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# CompVis/stable-diffusion-v1-4: unet/config.json
SD14_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8)
# CompVis/stable-diffusion-v1-4: vae/config.json
SD14_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
# openai/clip-vit-large-patch14 text tower (CompVis/stable-diffusion-v1-4: text_encoder/config.json)
SD14_TEXT: dict[str, Any] = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, attention_dropout=0.0, dropout=0.0,
    initializer_range=0.02, initializer_factor=1.0, projection_dim=768)
# CompVis/stable-diffusion-v1-4: scheduler/scheduler_config.json (PNDMScheduler), prediction type written out
SD14_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", trained_betas=None,
    skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")

# Stable Diffusion 1.x training schedule with a DDIM scheduler (the tiny variant's scheduler)
SD_SCHEDULER: dict[str, Any] = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                    beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                                    steps_offset=1)
TINY_UNET: dict[str, Any] = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=2, norm_num_groups=32)
TINY_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, block_out_channels=(32, 64), latent_channels=4, layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32,
    sample_size=16, scaling_factor=0.18215)
TINY_TEXT: dict[str, Any] = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                                 max_position_embeddings=77, projection_dim=32)

VARIANTS: dict[str, dict[str, Any]] = {
    "sd-1.4": {"unet": SD14_UNET, "vae": SD14_VAE, "text_encoder": SD14_TEXT,
               "scheduler": ("PNDMScheduler", SD14_SCHEDULER)},
    "tiny": {"unet": TINY_UNET, "vae": TINY_VAE, "text_encoder": TINY_TEXT,
             "scheduler": ("DDIMScheduler", SD_SCHEDULER)},
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def byte_clip_tokenizer(model_max_length: int = 77):
    """CLIP's tokenizer class over a byte-level vocabulary of 512 + 2 tokens and no merges (see module doc)."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def _build(variant: str, seed: int):
    """The variant's StableDiffusionPipeline, every module initialised under ``torch.manual_seed(seed)``."""
    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = VARIANTS[variant]
    tokenizer = byte_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**spec["unet"])
        vae = AutoencoderKL(**spec["vae"])
        text_cfg = CLIPTextConfig(**{"vocab_size": len(tokenizer), **spec["text_encoder"]},
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id)
        text_encoder = CLIPTextModel(text_cfg)
    scheduler_class, scheduler_cfg = spec["scheduler"]
    scheduler = getattr(diffusers, scheduler_class)(**scheduler_cfg)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def write_random_sd(path: str | Path, variant: str = "sd-1.4", seed: int = 0, dtype: str = "float16",
                    force: bool = False) -> Path:
    """Write a seeded random SD-1.x folder of ``variant`` (``sd-1.4`` or ``tiny``) in ``dtype`` to ``path``.

    The same (variant, seed, dtype) writes the same tensors. The folder is assembled next to ``path`` and
    renamed into place, so an interrupted write leaves no partial folder. An existing folder written by this
    function with the same settings is kept as it is; any other non-empty ``path`` is an error unless ``force``.
    """
    if variant not in VARIANTS:
        raise TailsynthError(f"random SD variant {variant!r} unknown; valid: {', '.join(VARIANTS)}")
    if dtype not in DTYPES:
        raise TailsynthError(f"dtype {dtype!r} unknown; valid: {', '.join(DTYPES)}")
    path = Path(path)
    record = {"random": True, "variant": variant, "seed": int(seed), "dtype": dtype,
              "tokenizer": "byte-level CLIP tokenizer, 514 tokens, no merges (not CLIP's BPE vocabulary)"}
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        old = path / RECORD
        if not force and old.is_file() and json.loads(old.read_text()) == record:
            from .sd import check_sd_folder
            check_sd_folder(path)
            return path
        if not force:
            raise TailsynthError(f"{path} exists and is not a random SD folder with variant {variant}, seed {seed}, "
                                 f"dtype {dtype}: choose another path or pass force")
    pipe = _build(variant, seed)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):  # .half()/.bfloat16(): in place, no diffusers warning
        getattr(module, {"float16": "half", "bfloat16": "bfloat16", "float32": "float"}[dtype])()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's folder is private (0700): an ordinary folder instead
    try:
        pipe.save_pretrained(str(staging), safe_serialization=True)
        atomic_write_json(staging / RECORD, record)
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        staging.rename(path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return path
