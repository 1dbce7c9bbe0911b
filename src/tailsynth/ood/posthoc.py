"""Post-hoc feature scores fitted on the HEAD training features (the in-distribution), higher = more tail:

- ``knn`` -- Deep k-NN (Sun, Ming, Zhu & Li, "Out-of-distribution detection with deep nearest neighbors",
  ICML 2022): the Euclidean distance from the L2-normalised test feature z / ||z|| to its k-th nearest
  neighbour among the L2-normalised penultimate features of the training head images. Sun et al.'s ID score is
  the negated distance; we store the distance itself.
- ``vim`` -- ViM (Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022):
  origin u = -pinv(W) b of the classifier layer (head rows: the head classes are the in-distribution), the
  principal subspace P of the training head features centred at u (top ``dim`` eigenvectors of
  (1/N) sum (x - u)(x - u)^T), the residual ||x^{P-perp}|| = ||(x - u) R|| (R: the remaining eigenvectors),
  alpha = sum_i max_{c in head} l_ic / sum_i ||x_i^{P-perp}|| over the training head images, the virtual logit
  l_0 = alpha ||x^{P-perp}|| and the ViM score = softmax probability of l_0 among [head logits, l_0]. We store
  its logarithm, l_0 - logsumexp([l_head, l_0]) (monotone in the paper's score, higher = more tail; the
  official code's ID score -l_0 + logsumexp(l_head) ranks the same way, reversed).
  Without the classifier layer (a non-linear head such as ``anchor_cosine``, or a caller that passes none)
  u is the mean of the training head features: a departure, recorded as ``origin = "feature_mean"``.

Both have a hyper-parameter chosen on the VALIDATION split (:meth:`Score.select`, AUROC of head vs tail):
k in {1, 5, 10, 20, 50} (capped at the number of training head images) and dim in {1/8, 1/4, 1/2, 3/4} of the
feature width plus the ViM code's default (1000 for width >= 2048, 512 for width >= 768, else width / 2),
capped below the rank of the centred training features so that the training residuals are not zero. The
chosen value is recorded in ``selection_`` (metrics.json ``scores.knn.selection.k``, ``scores.vim.selection.dim``,
with the validation AUROC and the candidates; without a usable validation split the defaults stay).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.special import logsumexp

from ..errors import TailsynthError
from .base import Score, as_array, as_labels, register_score
from .mahalanobis import cached_eigh
from .metrics import auroc

K_CANDIDATES = (1, 5, 10, 20, 50)
K_DEFAULT = 50                       # Sun et al.'s CIFAR-10 choice, used when there is no validation split
DIM_FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 3 / 4)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (+ 1e-10, as the Deep k-NN code: a zero feature stays zero)."""
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-10)


def knn_distances(query: np.ndarray, ref: np.ndarray, k: int, query_block: int = 1024,
                  ref_block: int = 4096) -> np.ndarray:
    """The k smallest Euclidean distances of each query row to the rows of ``ref``, ascending, float64 (N, k).

    Computed in blocks of ``query_block`` queries x ``ref_block`` references, keeping only the k smallest squared
    distances per query between blocks (``np.partition``): memory is O(query_block * (ref_block + k)), never N x M.
    Squared distances ||q||^2 + ||r||^2 - 2 q.r (clipped at 0).
    """
    q = np.asarray(query, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1]:
        raise TailsynthError(f"k-NN: query {q.shape} and reference {r.shape} must be 2-D of the same width")
    if not 1 <= k <= len(r):
        raise TailsynthError(f"k-NN: k must be in 1..{len(r)} (the number of reference samples), got {k}")
    query_block, ref_block = max(1, int(query_block)), max(1, int(ref_block))
    r_sq = np.einsum("ij,ij->i", r, r)
    out = np.empty((len(q), k))
    for i in range(0, len(q), query_block):
        qc = q[i:i + query_block]
        q_sq = np.einsum("ij,ij->i", qc, qc)[:, None]
        best = np.empty((len(qc), 0))
        for j in range(0, len(r), ref_block):
            d2 = q_sq + r_sq[None, j:j + ref_block] - 2.0 * (qc @ r[j:j + ref_block].T)
            best = np.concatenate([best, d2], axis=1)
            if best.shape[1] > k:
                best = np.partition(best, k - 1, axis=1)[:, :k]
        out[i:i + len(qc)] = np.sqrt(np.maximum(np.sort(best, axis=1), 0.0))
    return out


def _head_rows(features: Any, labels: Any, head: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = as_array(features, f"train features for score {name!r}", ndim=2)
    y = as_labels(labels, f"train labels for score {name!r}")
    if len(x) != len(y):
        raise TailsynthError(f"score {name!r}: {len(x)} train features but {len(y)} labels")
    mask = np.isin(y, head)
    if not mask.any():
        raise TailsynthError(f"score {name!r}: no training sample of a head class")
    return x[mask], mask


def _val_head_tail(labels: Any, head: np.ndarray, tail: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Boolean masks (head, tail) of the validation samples, or None when either group is empty."""
    y = as_labels(labels, "val labels")
    is_head, is_tail = np.isin(y, head), np.isin(y, tail)
    if not is_head.any() or not is_tail.any():
        return None
    return is_head, is_tail


def _pick(candidates: Sequence[int], aurocs: Sequence[float]) -> tuple[int, float]:
    """The candidate of the highest AUROC; on a tie the first (smallest) one."""
    best = int(np.argmax(np.asarray(aurocs)))
    return int(candidates[best]), float(aurocs[best])


@register_score
class DeepKNN(Score):
    """Distance to the k-th nearest L2-normalised training head feature (Sun et al., ICML 2022)."""

    name, uses, needs = "knn", "features", ("head",)

    def fit(self, features: Any, labels: Any, head_classes: Sequence[int], tail_classes: Sequence[int]):
        super().fit(None, None, head_classes, tail_classes)
        x, _ = _head_rows(features, labels, self.head_classes_, self.name)
        self.bank_ = l2_normalise(x)
        self.k_ = min(K_DEFAULT, len(x))
        self.selection_ = {"k": self.k_}
        return self

    def candidates(self) -> list[int]:
        return sorted({min(k, len(self.bank_)) for k in K_CANDIDATES})

    def select(self, logits: Any, features: Any, labels: Any, head_classes: Sequence[int],
               tail_classes: Sequence[int]) -> "DeepKNN":
        """k of the best validation AUROC (head vs tail) among :meth:`candidates`; one k-NN pass for all of them."""
        masks = _val_head_tail(labels, self.head_classes_, self.tail_classes_)
        if masks is None:
            return self
        z = as_array(features, f"val features for score {self.name!r}", ndim=2)
        cands = self.candidates()
        dist = self._distances(z, max(cands))
        aurocs = [auroc(dist[masks[0], k - 1], dist[masks[1], k - 1]) for k in cands]
        self.k_, best = _pick(cands, aurocs)
        self.selection_ = {"k": self.k_, "val_auroc": best, "candidates": cands}
        return self

    def _distances(self, z: np.ndarray, k: int) -> np.ndarray:
        if z.shape[1] != self.bank_.shape[1]:
            raise TailsynthError(f"score {self.name!r} was fitted on {self.bank_.shape[1]}-d features, "
                                 f"got {z.shape[1]}-d")
        return knn_distances(l2_normalise(z), self.bank_, k)

    def _score(self, z: np.ndarray) -> np.ndarray:
        return self._distances(z, self.k_)[:, -1]


def vim_default_dim(width: int) -> int:
    """The ViM code's principal dimension: 1000 for a feature width >= 2048, 512 for >= 768, else width // 2."""
    return 1000 if width >= 2048 else 512 if width >= 768 else width // 2


def _residual_sums(centred: np.ndarray, eigvec: np.ndarray, rows: int = 4096) -> np.ndarray:
    """(D + 1,): entry d = sum_i ||x_i R_d|| with R_d = eigvec[:, d:], the residual norms summed over the samples
    for every principal dimension d, in row blocks (memory O(rows * D), not N * D)."""
    sums = np.zeros(eigvec.shape[1] + 1)
    for i in range(0, len(centred), rows):
        sq = (centred[i:i + rows] @ eigvec) ** 2
        tail = np.cumsum(sq[:, ::-1], axis=1)[:, ::-1]                  # tail[:, d] = sum_{j >= d} sq[:, j]
        sums[:-1] += np.sqrt(tail).sum(axis=0)
    return sums


@register_score
class ViM(Score):
    """Virtual-logit matching (Wang et al., CVPR 2022); stored as log of the virtual class's softmax probability.

    ``fit`` also takes the training ``logits`` (N, K) (for alpha; default: computed from the classifier) and the
    ``classifier`` layer ``(W (K, D), b (K,))`` (for the origin u = -pinv(W_head) b_head; without it, u = the
    training head feature mean). ``score`` needs both the logits and the features.
    """

    name, uses, needs = "vim", "features", ("head",)
    fit_kwargs = ("logits", "classifier")

    def fit(self, features: Any, labels: Any, head_classes: Sequence[int], tail_classes: Sequence[int],
            logits: Any = None, classifier: tuple[Any, Any] | None = None) -> "ViM":
        super().fit(None, None, head_classes, tail_classes)
        head = self.head_classes_
        x, mask = _head_rows(features, labels, head, self.name)
        width = x.shape[1]
        if classifier is not None:
            w = as_array(classifier[0], "classifier weight", ndim=2)
            b = as_array(classifier[1], "classifier bias", ndim=1)
            if w.shape[1] != width or len(b) != len(w) or head.max() >= len(w):
                raise TailsynthError(f"score {self.name!r}: classifier W {w.shape}, b {b.shape} do not fit "
                                     f"{width}-d features and head classes {head.tolist()}")
            self.origin_ = -np.linalg.pinv(w[head]) @ b[head]          # u = -pinv(W) b (Wang et al. Sec. 3.3)
        else:
            w = b = None
            self.origin_ = x.mean(axis=0)                               # departure: no classifier layer
        if logits is not None:
            train_logits = as_array(logits, "train logits", ndim=2)
            if len(train_logits) != len(mask) or head.max() >= train_logits.shape[1]:
                raise TailsynthError(f"score {self.name!r}: train logits {train_logits.shape} do not match "
                                     f"{len(mask)} train samples and head classes {head.tolist()}")
            max_logit = train_logits[mask][:, head].max(axis=1)
        elif w is not None:
            max_logit = (x @ w[head].T + b[head]).max(axis=1)
        else:
            raise TailsynthError(f"score {self.name!r} needs the training logits or the classifier layer "
                                 f"(fit(..., logits=..., classifier=(W, b)))")
        centred = x - self.origin_
        eigval, eigvec = cached_eigh(centred.T @ centred / len(x))  # memoised: fitted again for val
        order = np.argsort(-eigval, kind="stable")
        self.eigvec_ = eigvec[:, order]
        cutoff = width * np.finfo(np.float64).eps * max(eigval.max(), 0.0)
        self.rank_ = int((eigval > cutoff).sum())
        if self.rank_ < 1:
            raise TailsynthError(f"score {self.name!r}: the training head features are all at the origin")
        self.residual_sums_ = _residual_sums(centred, self.eigvec_)     # sum_i ||x_i^{P-perp}|| for every dim
        self.sum_max_logit_ = float(max_logit.sum())
        self.width_ = width
        self.origin_from_ = "feature_mean" if classifier is None else "classifier"
        self.set_dim(min(vim_default_dim(width), self.max_dim()))
        return self

    def max_dim(self) -> int:
        """The largest principal dimension that leaves a non-zero training residual (rank - 1, at least 0)."""
        return max(self.rank_ - 1, 0)

    def candidates(self) -> list[int]:
        dims = {int(round(f * self.width_)) for f in DIM_FRACTIONS} | {vim_default_dim(self.width_)}
        return sorted({min(max(d, 1), self.max_dim()) for d in dims})

    def set_dim(self, dim: int) -> None:
        """Use the top ``dim`` principal directions as P (0 <= dim <= :meth:`max_dim`); recomputes alpha."""
        if not 0 <= int(dim) <= self.max_dim():
            raise TailsynthError(f"score {self.name!r}: dim must be in 0..{self.max_dim()} (below the rank of the "
                                 f"centred training head features), got {dim}")
        self.dim_ = int(dim)
        self.alpha_ = self.sum_max_logit_ / self.residual_sums_[dim]     # Wang et al.: sum max logit / sum residual
        self.residual_basis_ = self.eigvec_[:, dim:]                     # R: the complement of the principal subspace
        self.selection_ = {"dim": self.dim_, "origin": self.origin_from_}

    def select(self, logits: Any, features: Any, labels: Any, head_classes: Sequence[int],
               tail_classes: Sequence[int]) -> "ViM":
        """dim of the best validation AUROC (head vs tail) among :meth:`candidates`."""
        masks = _val_head_tail(labels, self.head_classes_, self.tail_classes_)
        if masks is None:
            return self
        head_logits, z = self._inputs(logits, features)
        sq = ((z - self.origin_) @ self.eigvec_) ** 2
        cands, aurocs = self.candidates(), []
        for dim in cands:
            self.set_dim(dim)
            s = self._from_residual(head_logits, np.sqrt(sq[:, dim:].sum(axis=1)))
            aurocs.append(auroc(s[masks[0]], s[masks[1]]))
        dim, best = _pick(cands, aurocs)
        self.set_dim(dim)
        self.selection_.update(val_auroc=best, candidates=cands)
        return self

    def _inputs(self, logits: Any, features: Any) -> tuple[np.ndarray, np.ndarray]:
        z = as_array(features, f"features for score {self.name!r}", ndim=2)
        lg = as_array(logits, f"logits for score {self.name!r}", ndim=2)
        if z.shape[1] != self.width_:
            raise TailsynthError(f"score {self.name!r} was fitted on {self.width_}-d features, got {z.shape[1]}-d")
        if len(lg) != len(z) or self.head_classes_.max() >= lg.shape[1]:
            raise TailsynthError(f"score {self.name!r}: logits {lg.shape} do not match features {z.shape}")
        return lg[:, self.head_classes_], z

    def _from_residual(self, head_logits: np.ndarray, residual: np.ndarray) -> np.ndarray:
        virtual = self.alpha_ * residual
        return virtual - logsumexp(np.concatenate([head_logits, virtual[:, None]], axis=1), axis=1)

    def score(self, logits: Any = None, features: Any = None) -> np.ndarray:
        if self.head_classes_ is None:
            raise TailsynthError(f"score {self.name!r} is not fitted; call fit(...) first")
        head_logits, z = self._inputs(logits, features)
        return self._from_residual(head_logits, np.linalg.norm((z - self.origin_) @ self.residual_basis_, axis=1))


def classifier_layer(model: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(W (K, D), b (K,))`` of a network whose head is affine (``nn.Linear``, or the masked linear head of
    head-only networks: the head rows are the linear layer's), as float64 numpy; None for any other head (e.g.
    ``anchor_cosine``), where ViM falls back to the training head feature mean as origin."""
    from torch import nn

    from ..models.heads import MaskedLinear
    head = getattr(model, "head", None)
    layer = head.linear if isinstance(head, MaskedLinear) else head
    if not isinstance(layer, nn.Linear) or layer.bias is None:
        return None
    return (layer.weight.detach().cpu().double().numpy(), layer.bias.detach().cpu().double().numpy())
