"""``tailsynth anchors``: Dream-OOD / BOOD's conditioning-space anchors of a local Stable Diffusion folder."""
from __future__ import annotations

from pathlib import Path

import click

from ..registry import register_command


@register_command
def anchors_command(open_graph) -> click.Command:
    """The ``anchors`` command (it needs no experiment: ``open_graph`` is unused)."""

    @click.command("anchors")
    @click.argument("sd_path")
    @click.argument("class_names", nargs=-1, required=True)
    @click.option("--out", default="anchors.safetensors", show_default=True,
                  help="safetensors file: 'anchors' (n, D) float32 and 'token_ids' (n, max tokens), -1 padded")
    def anchors(sd_path, class_names, out) -> None:
        """Dream-OOD / BOOD anchors: the CLIP token-embedding row of each class name of a LOCAL Stable Diffusion
        folder (a name of several tokens: the mean of their rows); prints the tokens and norms."""
        import torch
        from safetensors.torch import save_file

        from ...diffusion.sd import SDBackend
        backend = SDBackend({"path": sd_path, "class_names": list(class_names)})
        ids = [backend.name_token_ids(name) for name in class_names]
        rows = backend.anchor_embeddings(torch.arange(len(class_names))).detach().float()
        width = max(len(t) for t in ids)
        token_ids = torch.tensor([t + [-1] * (width - len(t)) for t in ids], dtype=torch.long)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        save_file({"anchors": rows.contiguous(), "token_ids": token_ids}, out,
                  metadata={"class_names": "\t".join(class_names), "sd_path": str(Path(sd_path).resolve())})
        for name, t, row in zip(class_names, ids, rows):
            tokens = backend.tokenizer.convert_ids_to_tokens(t)
            click.echo(f"{name:<24} tokens {tokens}  |anchor| {float(row.norm()):.4f}")
        click.echo(f"wrote {out}: {rows.shape[0]} anchors of dimension {rows.shape[1]}")

    return anchors
