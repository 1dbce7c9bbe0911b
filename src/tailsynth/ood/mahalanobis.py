"""Feature-based scores: Mahalanobis distance (Lee et al. 2018) and relative Mahalanobis (Ren et al. 2021).

Fit (on the penultimate features z of the TRAINING set):
- class means mu_c = mean of z_i with y_i = c, for every head and tail class;
- one tied covariance (Lee et al. 2018, Eq. 1): Sigma = (1/N) sum_c sum_{i: y_i = c} (z_i - mu_c)(z_i - mu_c)^T.
  The head-referenced scores (``maha_head``, ``rmaha``) fit it on the HEAD samples only, the
  in-distribution, as Lee et al. and Ren et al. define it (LoGex Table 1 "Maha-head"); ``maha_head_all`` and
  ``rmaha_all`` fit it on the head and tail samples. The tail-referenced scores (``maha_tail``,
  ``maha_tail_minus_head``) compare head and tail distances and use one Sigma over all classes;
- the precision P = pinv(Sigma) (Hermitian pseudo-inverse, as sklearn's EmpiricalCovariance used by the
  official Lee et al. / Ren et al. code; eigenvalues below D * eps * lambda_max are treated as zero), so
  the rank-deficient Sigma of small sets or dead ReLU units is handled: null directions are ignored.
  P is applied through a whitener W (W W^T = P) so all class distances cost one matrix product;
- for rMaha, a background Gaussian N(mu_0, Sigma_0) on the same samples (Ren et al. 2021, Eq. 3): head only
  for ``rmaha``, head + tail for ``rmaha_all``.

Scores (squared distances MD_c(z) = (z - mu_c)^T P (z - mu_c), the form of Lee et al. Eq. 2 and
Ren et al.'s MD_k; higher = more tail):
- ``maha_head``  = min_{c in head} MD_c(z)
- ``maha_tail``  = -min_{c in tail} MD_c(z)     (close to a tail class = tail)
- ``maha_tail_minus_head`` = min_{head} MD_c(z) - min_{tail} MD_c(z)
- ``rmaha``      = min_{c in head} [MD_c(z) - MD_0(z)]   (Ren et al.: RMD; ID = head)

LoGex Table 3 lists "Maha dist. to tail" with AUC 23 %, i.e. below chance; with the orientation above a
well-separated tail scores high, so that figure is either a genuine failure in their setting or the
opposite orientation (distance to tail as tail score). A user comparing can read 1 - AUROC.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import TailsynthError
from .base import Score, as_array, as_labels, register_score


def class_means(features: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """mu_c for each c in ``classes`` (len(classes), D); a class without samples is an error."""
    means = np.zeros((len(classes), features.shape[1]))
    for k, c in enumerate(classes):
        mask = labels == c
        if not mask.any():
            raise TailsynthError(f"Mahalanobis fit: class {int(c)} has no training sample")
        means[k] = features[mask].mean(axis=0)
    return means


def tied_whitener(features: np.ndarray, labels: np.ndarray, classes: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Whitener of the tied within-class covariance of the samples of ``classes`` (D, r), see :func:`whitener`."""
    centred = []
    for k, c in enumerate(classes):
        centred.append(features[labels == c] - means[k])
    x = np.concatenate(centred, axis=0)
    return whitener(x.T @ x / len(x))


_EIGH: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # matrix digest -> (eigenvalues, eigenvectors), the last few


def cached_eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.linalg.eigh(matrix)``, memoised by the matrix's bytes (the last 8 results of this process, read-only): an
    evaluation fits the same covariance for several scores (Mahalanobis, rMaha, ViM) and twice (test and val), and the
    eigendecomposition of ResNet-50's 2048-d features takes ~17 s on one CPU core (a 64-d one took milliseconds)."""
    import hashlib
    key = hashlib.sha1(np.ascontiguousarray(matrix, dtype=np.float64).tobytes()).hexdigest() + str(matrix.shape)
    if key not in _EIGH:
        if len(_EIGH) >= 8:
            _EIGH.pop(next(iter(_EIGH)))
        eigval, eigvec = np.linalg.eigh(matrix)
        eigval.setflags(write=False)
        eigvec.setflags(write=False)
        _EIGH[key] = (eigval, eigvec)
    return _EIGH[key]


def whitener(sigma: np.ndarray) -> np.ndarray:
    """W (D, r) with W W^T = pinv(Sigma): eigenvectors scaled by lambda^{-1/2}, keeping the r eigenvalues above
    D * eps * lambda_max (the cutoff of scipy's ``pinvh``); null directions of Sigma are ignored.

    Then MD(z, mu) = (z - mu)^T pinv(Sigma) (z - mu) = ||(z - mu) W||^2, one (N, D) x (D, r) product for all
    means instead of one (N, D) x (D, D) product per class.
    """
    eigval, eigvec = cached_eigh(sigma)
    cutoff = sigma.shape[0] * np.finfo(np.float64).eps * max(eigval.max(), 0.0)
    keep = eigval > cutoff
    if not keep.any():
        raise TailsynthError("Mahalanobis fit: the feature covariance is zero (all training features identical)")
    return eigvec[:, keep] / np.sqrt(eigval[keep])


def squared_mahalanobis(z: np.ndarray, means: np.ndarray, whiten: np.ndarray) -> np.ndarray:
    """MD_c(z_i) = ||(z_i - mu_c) W||^2 for every sample and mean, (N, C)."""
    zw = z @ whiten                       # (N, r)
    mw = means @ whiten                   # (C, r)
    out = np.empty((len(z), len(means)))
    for k in range(len(means)):
        d = zw - mw[k]
        out[:, k] = (d * d).sum(axis=1)
    return out


class _Mahalanobis(Score):
    """Fits class means and the tied covariance's whitener (and for rMaha the background Gaussian)."""

    uses = "features"
    fit_on = "all"  # whose samples the covariance (and rMaha's background) is fitted on: "head" or "all"

    def _fit_classes(self) -> np.ndarray:
        if self.fit_on == "head":
            return self.head_classes_
        return np.concatenate([self.head_classes_, self.tail_classes_])

    def fit(self, features: Any, labels: Any, head_classes: Sequence[int], tail_classes: Sequence[int]):
        super().fit(None, None, head_classes, tail_classes)
        x = as_array(features, f"train features for score {self.name!r}", ndim=2)
        y = as_labels(labels, f"train labels for score {self.name!r}")
        if len(x) != len(y):
            raise TailsynthError(f"score {self.name!r}: {len(x)} train features but {len(y)} labels")
        classes = np.concatenate([self.head_classes_, self.tail_classes_])
        means = class_means(x, y, classes)
        fit_classes = self._fit_classes()
        self.whitener_ = tied_whitener(x, y, fit_classes, means[:len(fit_classes)])
        self.head_means_ = means[:len(self.head_classes_)]
        self.tail_means_ = means[len(self.head_classes_):]
        self.dim_ = x.shape[1]
        return self

    def _distances(self, z: np.ndarray, means: np.ndarray) -> np.ndarray:
        if z.shape[1] != self.dim_:
            raise TailsynthError(f"score {self.name!r} was fitted on {self.dim_}-d features, got {z.shape[1]}-d")
        return squared_mahalanobis(z, means, self.whitener_)


@register_score
class MahaHead(_Mahalanobis):
    """min_{c in head} MD_c(z), Sigma fitted on the head samples (Lee et al. 2018; LoGex "Maha-head")."""

    name, needs, fit_on = "maha_head", ("head",), "head"

    def _score(self, z: np.ndarray) -> np.ndarray:
        return self._distances(z, self.head_means_).min(axis=1)


@register_score
class MahaHeadAll(MahaHead):
    """``maha_head`` with Sigma fitted on the head and tail samples."""

    name, fit_on = "maha_head_all", "all"


@register_score
class MahaTail(_Mahalanobis):
    name, needs = "maha_tail", ("tail",)

    def _score(self, z: np.ndarray) -> np.ndarray:
        return -self._distances(z, self.tail_means_).min(axis=1)


@register_score
class MahaTailMinusHead(_Mahalanobis):
    name, needs = "maha_tail_minus_head", ("head", "tail")

    def _score(self, z: np.ndarray) -> np.ndarray:
        return self._distances(z, self.head_means_).min(axis=1) - self._distances(z, self.tail_means_).min(axis=1)


@register_score
class RelativeMahalanobis(_Mahalanobis):
    """min_{c in head} [MD_c(z) - MD_0(z)] (Ren et al. 2021), Sigma and N(mu_0, Sigma_0) on the head samples."""

    name, needs, fit_on = "rmaha", ("head",), "head"

    def fit(self, features: Any, labels: Any, head_classes: Sequence[int], tail_classes: Sequence[int]):
        super().fit(features, labels, head_classes, tail_classes)
        x = as_array(features, "train features", ndim=2)
        x = x[np.isin(as_labels(labels, "train labels"), self._fit_classes())]
        self.background_mean_ = x.mean(axis=0, keepdims=True)             # mu_0, (1, D)
        centred = x - self.background_mean_
        self.background_whitener_ = whitener(centred.T @ centred / len(x))
        return self

    def _score(self, z: np.ndarray) -> np.ndarray:
        md_k = self._distances(z, self.head_means_)                         # (N, |head|)
        md_0 = squared_mahalanobis(z, self.background_mean_, self.background_whitener_)  # (N, 1)
        return (md_k - md_0).min(axis=1)


@register_score
class RelativeMahalanobisAll(RelativeMahalanobis):
    """``rmaha`` with Sigma and the background Gaussian fitted on the head and tail samples."""

    name, fit_on = "rmaha_all", "all"
