"""Stable Diffusion 1.x latent backend, loaded from a LOCAL diffusers folder (never downloads).

Components (Rombach et al. 2022): CLIP tokenizer + text encoder (condition = last hidden state,
(B, 77, 768) for SD-1.4), UNet :math:`\\varepsilon_\\theta(z_t, t, c)`, VAE with latent scaling factor from
its config (0.18215 for SD-1.x). Class ids become prompts through ``prompt_template``; LoGex (§3, step 2)
uses "A histopathological slide from a patient with <class>". The null condition is the embedded empty
prompt. The noise schedule is read from ``scheduler/scheduler_config.json`` (SD: scaled-linear,
0.00085..0.012, 1000 steps). ``dtype`` fp16/bf16 is meant for GPUs; outputs of ``eps`` are float32.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from ..config import StrictConfig, build_config
from ..errors import TailsynthError
from .backend import BACKENDS
from .schedule import make_alphas_cumprod

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class SDBackendConfig(StrictConfig):
    path: str  # local diffusers folder of an SD-1.x model
    class_names: list[str] = []
    prompt_template: str = "A histopathological slide from a patient with {class_name}"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


FOLDER_LAYOUT = ("model_index.json, unet/, vae/, text_encoder/ (each a config.json and its weights), tokenizer/ "
                 "(tokenizer_config.json and tokenizer.json or vocab.json + merges.txt), "
                 "scheduler/scheduler_config.json")
SUPPORTED = ("Stable Diffusion 1.x: a UNet2DConditionModel with 4 latent channels in and out and no extra conditioning "
             "(no class or added embeddings), a VAE with 4 latent channels, a CLIP text encoder whose width equals the "
             "UNet's cross_attention_dim and whose positions cover the tokenizer's model_max_length, epsilon "
             "prediction and a scaled_linear, linear or squaredcos_cap_v2 beta schedule")
WEIGHTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")


def _read_config(path: Path, where: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TailsynthError(f"{where}: cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise TailsynthError(f"{where}: {path} is not a JSON mapping")
    return data


def _missing_parts(root: Path) -> list[str]:
    """The parts of a diffusers SD folder that ``root`` lacks (a weights file: safetensors, .bin or sharded)."""
    missing = [] if (root / "model_index.json").is_file() else ["model_index.json"]
    for sub, stem in WEIGHTS.items():
        if not (root / sub).is_dir():
            missing.append(f"{sub}/")
            continue
        if not (root / sub / "config.json").is_file():
            missing.append(f"{sub}/config.json")
        names = [f"{stem}.safetensors", f"{stem}.bin", f"{stem}.safetensors.index.json", f"{stem}.bin.index.json"]
        if not any((root / sub / n).is_file() for n in names):
            variants = sorted(p.name for p in (root / sub).glob(f"{stem}.*.*") if not p.name.endswith(".json"))
            missing.append(f"{sub}/{stem}.safetensors (or .bin)" + (
                f" -- found only variant files {', '.join(variants)}, which are not loaded" if variants else ""))
    tok = root / "tokenizer"
    if not tok.is_dir():
        missing.append("tokenizer/")
    else:
        if not (tok / "tokenizer_config.json").is_file():
            missing.append("tokenizer/tokenizer_config.json")
        bpe = (tok / "vocab.json").is_file() and (tok / "merges.txt").is_file()
        if not ((tok / "tokenizer.json").is_file() or bpe):
            missing.append("tokenizer/tokenizer.json (or vocab.json + merges.txt)")
    if not (root / "scheduler" / "scheduler_config.json").is_file():
        missing.append("scheduler/scheduler_config.json" if (root / "scheduler").is_dir() else "scheduler/")
    return missing


def _vocabulary_size(tok: Path, where: str) -> int:
    """1 + the largest token id of the tokenizer's vocabulary and added tokens."""
    if (tok / "tokenizer.json").is_file():
        data = _read_config(tok / "tokenizer.json", where)
        ids = list((data.get("model") or {}).get("vocab", {}).values())
        ids += [t.get("id", 0) for t in data.get("added_tokens", [])]
    else:
        ids = list(_read_config(tok / "vocab.json", where).values())
    return 1 + max((int(i) for i in ids), default=-1)


def check_sd_folder(path: str | Path, where: str = "diffusion.sd_path") -> dict:
    """Check that ``path`` is a complete Stable Diffusion 1.x folder this backend can load and run, from its JSON
    files alone (no weights are read): every part present (:data:`FOLDER_LAYOUT`), and the structure SD-1.x code
    relies on (:data:`SUPPORTED`): 4-channel latents in and out of the UNet and the VAE, conditioning width =
    text-encoder width, no class/added embeddings the sampler would have to supply, epsilon prediction, a known beta
    schedule, token ids inside the text encoder's table and ``model_max_length`` inside its positions. Sizes are
    not checked, so a small random model of the same structure passes. Raises a :class:`TailsynthError` that
    names what is missing, or what was found and what is supported; returns the structure found."""
    root = Path(path)
    if not root.is_dir():
        raise TailsynthError(f"{where}: {root} is not a local Stable Diffusion folder (not a folder); expected "
                             f"{FOLDER_LAYOUT}. `tailsynth weights random-sd` writes one with random weights")
    missing = _missing_parts(root)
    if missing:
        raise TailsynthError(f"{where}: {root} is not a local Stable Diffusion folder: missing {', '.join(missing)}")
    index = _read_config(root / "model_index.json", where)
    unet = _read_config(root / "unet" / "config.json", where)
    vae = _read_config(root / "vae" / "config.json", where)
    text = _read_config(root / "text_encoder" / "config.json", where)
    text = text.get("text_config") or text  # a full CLIPConfig: its text tower
    tokenizer = _read_config(root / "tokenizer" / "tokenizer_config.json", where)
    sched = _read_config(root / "scheduler" / "scheduler_config.json", where)
    found = {"pipeline": index.get("_class_name"), "unet": unet.get("_class_name", "UNet2DConditionModel"),
             "in_channels": unet.get("in_channels", 4), "out_channels": unet.get("out_channels", 4),
             "vae_latent_channels": vae.get("latent_channels", 4),
             "cross_attention_dim": unet.get("cross_attention_dim", 1280),
             "text_hidden_size": text.get("hidden_size"), "text_positions": text.get("max_position_embeddings"),
             "text_vocab_size": text.get("vocab_size"), "model_max_length": tokenizer.get("model_max_length"),
             "prediction_type": sched.get("prediction_type", "epsilon"),
             "beta_schedule": sched.get("beta_schedule", "scaled_linear")}  # _schedule_from_folder's default
    problems = []
    if found["unet"] != "UNet2DConditionModel":
        problems.append(f"unet is a {found['unet']}")
    for key in ("in_channels", "out_channels"):
        if found[key] != 4:
            problems.append(f"unet {key} {found[key]} (4-channel latents expected)")
    if found["vae_latent_channels"] != 4:
        problems.append(f"vae latent_channels {found['vae_latent_channels']}")
    for key in ("class_embed_type", "addition_embed_type", "num_class_embeds", "encoder_hid_dim"):
        if unet.get(key) is not None:
            problems.append(f"unet {key} {unet[key]!r} (extra conditioning SD-1.x samplers do not supply)")
    if found["cross_attention_dim"] != found["text_hidden_size"]:
        problems.append(f"unet cross_attention_dim {found['cross_attention_dim']} but text encoder hidden_size "
                        f"{found['text_hidden_size']}")
    if found["prediction_type"] != "epsilon":
        problems.append(f"scheduler prediction_type {found['prediction_type']!r}")
    if found["beta_schedule"] not in BETA_SCHEDULES or sched.get("trained_betas") is not None:
        problems.append(f"scheduler beta_schedule {found['beta_schedule']!r}"
                        + (" with trained_betas" if sched.get("trained_betas") is not None else ""))
    length, positions = found["model_max_length"], found["text_positions"]
    if not isinstance(length, int) or not isinstance(positions, int) or not 1 <= length <= positions:
        problems.append(f"tokenizer model_max_length {length} but text encoder max_position_embeddings {positions}")
    vocabulary = _vocabulary_size(root / "tokenizer", where)
    if isinstance(found["text_vocab_size"], int) and vocabulary > found["text_vocab_size"]:
        problems.append(f"tokenizer ids up to {vocabulary - 1} but text encoder vocab_size {found['text_vocab_size']}")
    if problems:
        kind = f" (model_index.json: {found['pipeline']})" if found["pipeline"] else ""
        raise TailsynthError(f"{where}: {root} is not a Stable Diffusion 1.x folder{kind}: found "
                             f"{'; '.join(problems)}. Supported: {SUPPORTED}")
    return found


def _schedule_from_folder(root: Path) -> tuple[str, torch.Tensor]:
    """The schedule's name (``squaredcos_cap_v2`` read as ``cosine``) and its alphas_cumprod."""
    cfg_path = root / "scheduler" / "scheduler_config.json"
    sched = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    kind = sched.get("beta_schedule", "scaled_linear")
    kind = "cosine" if kind == "squaredcos_cap_v2" else kind
    return kind, make_alphas_cumprod(kind, int(sched.get("num_train_timesteps", 1000)),
                                     float(sched.get("beta_start", 0.00085)), float(sched.get("beta_end", 0.012)))


@BACKENDS.register("sd")
class SDBackend(torch.nn.Module):
    """Stable Diffusion 1.x; implements :class:`~tailsynth.diffusion.backend.DiffusionBackend`."""

    clip_x0 = False  # VAE latents are not bounded: no clipping (as SD's DDIM scheduler, clip_sample=False)

    trains_base = False  # the base is a pretrained Stable Diffusion folder on disk

    prediction = "epsilon"  # SD-1.x UNets predict the noise

    extra_tokens = None  # new classes are words in the prompt template: no learned token table

    @classmethod
    def working_size(cls, image_size: int, resolution: int) -> int:
        """SD generates (and LoRA trains) at ``resolution`` px; images are resized to the classifier's size."""
        return resolution

    @classmethod
    def check_options(cls, options: dict, where: str, image_size: int, channels: int) -> None:
        """SD has no options of its own beyond the diffusion config's sd_path / prompt_template / dtype."""

    @classmethod
    def check_folder(cls, path: str | None, where: str) -> dict:
        """The pretrained folder a run will load (``diffusion.sd_path``), checked before any stage runs
        (:func:`check_sd_folder`)."""
        if not path:
            raise TailsynthError(f"{where} is not set: the sd backend generates with a local Stable Diffusion 1.x "
                                 f"folder (tailsynth run ... --sd-path FOLDER)")
        return check_sd_folder(path, where)

    @classmethod
    def load_base(cls, folder: Path, record: dict, options: dict) -> "SDBackend":
        return cls({"path": record["path"], "class_names": [], "prompt_template": options["prompt_template"],
                    "dtype": options["dtype"]})

    def __init__(self, cfg: SDBackendConfig | dict, seed: int = 0):
        super().__init__()
        self.cfg = cfg if isinstance(cfg, SDBackendConfig) else build_config(SDBackendConfig, cfg, "sd backend")
        root = Path(self.cfg.path)
        check_sd_folder(root, "sd backend path")
        dtype = DTYPES[self.cfg.dtype]
        kw = dict(local_files_only=True)
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(str(root), subfolder="tokenizer", **kw)
            self.text_encoder = CLIPTextModel.from_pretrained(str(root), subfolder="text_encoder", dtype=dtype, **kw)
            self.unet = UNet2DConditionModel.from_pretrained(str(root), subfolder="unet", torch_dtype=dtype, **kw)
            self.vae = AutoencoderKL.from_pretrained(str(root), subfolder="vae", torch_dtype=dtype, **kw)
        except (OSError, ValueError) as err:
            raise TailsynthError(f"cannot load Stable Diffusion from {root}: {err}") from None
        for module in (self.text_encoder, self.unet, self.vae):
            module.requires_grad_(False)
            module.eval()
        self.dtype = dtype
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.class_names = list(self.cfg.class_names)
        self.schedule, self.alphas_cumprod = _schedule_from_folder(root)  # SD-1.x: scaled_linear

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet

    def _device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def prompts_for(self, class_ids: torch.Tensor) -> list[str]:
        ids = [int(i) for i in torch.as_tensor(class_ids).view(-1)]
        bad = [i for i in ids if not 0 <= i < len(self.class_names)]
        if bad:
            raise TailsynthError(f"class ids {bad[:5]} out of range 0..{len(self.class_names) - 1} "
                                 f"(class_names: {self.class_names})")
        return [self.cfg.prompt_template.format(class_name=self.class_names[i]) for i in ids]

    @torch.no_grad()
    def _embed(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        return self.text_encoder(tok.input_ids.to(self._device()))[0]

    def encode_condition(self, class_ids: torch.Tensor | None = None, prompts: list[str] | None = None) -> torch.Tensor:
        """CLIP last hidden state (B, 77, D) for ``prompts`` or the template filled with class names."""
        if (class_ids is None) == (prompts is None):
            raise TailsynthError("encode_condition needs exactly one of class_ids or prompts")
        return self._embed(list(prompts) if prompts is not None else self.prompts_for(class_ids))

    def null_condition(self, batch: int) -> torch.Tensor:
        return self._embed([""]).expand(batch, -1, -1)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
        return self.unet(x_t.to(self.dtype), t, encoder_hidden_states=cond.to(self.dtype)).sample.float()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """VAE posterior mode times the scaling factor (deterministic; no sampling of the posterior)."""
        posterior = self.vae.encode((images * 2.0 - 1.0).to(self.dtype)).latent_dist
        return posterior.mode().float() * self.scaling_factor

    def decode(self, z: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """VAE decode to [0, 1]; ``clamp=False`` keeps the values outside (FG-Entropy's raw decode)."""
        images = self.vae.decode((z / self.scaling_factor).to(self.dtype)).sample.float()
        images = (images + 1.0) / 2.0
        return images.clamp(0.0, 1.0) if clamp else images

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if image_size % factor:
            raise TailsynthError(f"image size {image_size} is not divisible by the VAE downsampling factor {factor}")
        return (int(self.unet.config.in_channels), image_size // factor, image_size // factor)

    # -- conditioning-space anchors (Dream-OOD / BOOD) ----------------------------------------------
    def name_token_ids(self, name: str) -> list[int]:
        ids = self.tokenizer(name, add_special_tokens=False).input_ids
        if not ids:
            raise TailsynthError(f"class name {name!r} has no tokens")
        return list(ids)

    def anchor_embeddings(self, class_ids: torch.Tensor) -> torch.Tensor:
        """The CLIP token-embedding row of each class's name (n, 768 for SD-1.x), Dream-OOD's anchors; a name of
        several tokens: the mean of their rows (it becomes ONE pseudo-word, see :meth:`condition_from_anchor`)."""
        table = self.text_encoder.get_input_embeddings().weight
        rows = [table[torch.as_tensor(self.name_token_ids(self.class_names[int(i)]))].float().mean(0)
                for i in torch.as_tensor(class_ids).view(-1)]
        return torch.stack(rows)

    @torch.no_grad()
    def condition_from_anchor(self, vectors: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        """Text-encoder states (n, 77, D) of ``prompt_template`` in which the class name is ONE token position whose
        input embedding is overwritten by the vector (Dream-OOD stage 3: the class token's embedding row is
        replaced by an outlier embedding; the rest of the prompt is encoded as usual)."""
        table = self.text_encoder.get_input_embeddings()
        if vectors.ndim != 2 or vectors.shape[1] != table.embedding_dim:
            raise TailsynthError(f"anchor vectors of shape {tuple(vectors.shape)}; this text encoder's token "
                                 f"embeddings have {table.embedding_dim} dimensions")
        length = self.tokenizer.model_max_length
        before, _, after = (part.strip() for part in self.cfg.prompt_template.partition("{class_name}"))
        head = self.tokenizer(before, add_special_tokens=False).input_ids if before else []
        tail = self.tokenizer(after, add_special_tokens=False).input_ids if after else []
        pad = [self.tokenizer.pad_token_id or self.tokenizer.eos_token_id] * length
        ids = [([self.tokenizer.bos_token_id, *head, self.name_token_ids(self.class_names[int(i)])[0], *tail,
                 self.tokenizer.eos_token_id] + pad)[:length] for i in torch.as_tensor(class_ids).view(-1)]
        rows = torch.arange(len(ids))
        pos = torch.full((len(ids),), 1 + len(head))  # the class name's one position
        values = vectors.to(table.weight.device, table.weight.dtype)

        def substitute(_module, _inputs, output):
            output = output.clone()
            output[rows, pos] = values
            return output

        handle = table.register_forward_hook(substitute)
        try:
            return self.text_encoder(torch.as_tensor(ids, device=self._device()))[0]
        finally:
            handle.remove()

    def add_classes(self, names: list[str]) -> list[int]:
        """New classes are just new names in the prompt template (SD already has words)."""
        if not names:
            raise TailsynthError("add_classes needs at least one class name")
        start = len(self.class_names)
        self.class_names.extend(names)
        return list(range(start, start + len(names)))
