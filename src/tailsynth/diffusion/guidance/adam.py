"""Adam (Kingma & Ba 2015, Alg. 1) written out per sample, so a batch can shrink and be refilled.

DiG-IN optimises each image's own x_T and embedding deltas; the images are independent problems that only
share the forward pass. Adam is element-wise, so its moments can be sliced along the batch axis; the step
counter (bias correction) is kept per sample. The update reproduces ``torch.optim.Adam`` (no weight decay,
no amsgrad): m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
"""
from __future__ import annotations

import torch


class PerSampleAdam:
    """Moments for one parameter tensor whose batch axis is ``batch_dim``."""

    def __init__(self, param: torch.Tensor, lr: float, batch_dim: int, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, self.batch_dim, self.betas, self.eps = float(lr), int(batch_dim), betas, float(eps)
        self.m = torch.zeros_like(param, dtype=torch.float32)
        self.v = torch.zeros_like(param, dtype=torch.float32)

    def _per_sample(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        shape = [1] * like.dim()
        shape[self.batch_dim] = -1
        return values.view(shape)

    @torch.no_grad()
    def step(self, param: torch.Tensor, grad: torch.Tensor, t: torch.Tensor) -> None:
        """In-place update of ``param`` with ``grad``; ``t`` (B,) float = this sample's step number (>= 1)."""
        b1, b2 = self.betas
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        t = t.double()  # bias corrections in float64 as torch.optim.Adam computes them (Python floats)
        bc1 = self._per_sample(1 - b1**t, param).to(param.dtype)
        bc2_sqrt = self._per_sample((1 - b2**t).sqrt(), param).to(param.dtype)
        denom = (self.v.sqrt() / bc2_sqrt).add_(self.eps)
        param.sub_(self.lr / bc1 * self.m / denom)

    def select(self, index: torch.Tensor) -> None:
        """Keep the moments of the samples ``index`` (batch shrinks when samples leave)."""
        self.m = self.m.index_select(self.batch_dim, index)
        self.v = self.v.index_select(self.batch_dim, index)

    def append(self, n: int) -> None:
        """Zero moments for ``n`` newly admitted samples."""
        shape = list(self.m.shape)
        shape[self.batch_dim] = n
        zeros = self.m.new_zeros(shape)
        self.m = torch.cat([self.m, zeros], dim=self.batch_dim)
        self.v = torch.cat([self.v, zeros.clone()], dim=self.batch_dim)
