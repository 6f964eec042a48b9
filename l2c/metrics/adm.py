"""The maths of the ADM evaluator (openai/guided-diffusion ``evaluations/evaluator.py``), in numpy/scipy.

Semantics, checked against that file:

- Statistics: ``mu = mean(feats, axis=0)``, ``sigma = np.cov(feats, rowvar=False)`` (float64).
- Fréchet distance: ``scipy.linalg.sqrtm(sigma1 @ sigma2)``; if the result is not finite, retry with
  ``eps`` added to both diagonals; if complex, raise when the *diagonal* imaginary part is not within
  1e-3 of zero (the error reports the largest imaginary magnitude), else keep the real part.
- Fewer samples than feature dimensions (N <= D, e.g. a test or a rehearsal): the sample
  covariance has rank < N and ``sqrtm`` of a singular D x D product is both slow and ill-posed, so
  :func:`frechet_distance_low_rank` computes the same distance exactly through an N x N matrix:
  with S1 = A A^T (A: centred features / sqrt(N-1)), the non-zero eigenvalues of S1 S2 are those of
  the symmetric positive semi-definite A^T S2 A, so tr sqrt(S1 S2) = sum sqrt(eig(A^T S2 A)).
- Inception score: softmax of the (bias-free) logits; the samples are cut into consecutive splits
  of ``split_size`` (5,000) in file order, without shuffling. ADM loops
  ``for i in range(0, N, split_size)``, so **the last split is whatever remains** (for N = 50,000
  there are exactly 10 splits; for N = 50,001 an eleventh split of one sample, whose score is 1,
  enters the mean with equal weight). The score is the plain mean of ``exp(mean KL(p(y|x) || p(y)))``
  over splits. ADM computes ``p * (log p - log mean p)`` from float32 softmax outputs; here the
  log-probabilities come from a float64 log-softmax (identical where ADM's is finite, and no
  ``0 * log 0 = nan`` when a probability underflows).
- Improved precision/recall (Kynkäänniemi et al. 2019), k = 3: the radius of a point is the k-th
  smallest distance to the points of its own set *not counting the zero distance to itself*;
  ADM takes column ``k`` of the partitioned row that includes the self-distance, which is what is
  done here too (so an exact duplicate counts as a neighbour at distance 0). A sample is "inside"
  when its distance to some reference point is ``<=`` that point's radius (inclusive).
  precision = share of samples inside some reference ball, recall = share of reference points
  inside some sample ball. ADM works on *squared* Euclidean distances (same comparisons; the
  radii returned here are squared too), computed in float16 when that is finite and float32
  otherwise. Here the distances are ``|a|^2 + |b|^2 - 2 a.b`` clamped at 0, on features centred by
  the reference mean (a shift leaves distances unchanged and reduces cancellation), in float32
  by default or float64 (``dtype``), in blocks of at most ``chunk x chunk`` so memory does not grow
  with N^2 (radii keep a running k+1 smallest per row).
- KID (not in ADM; torch-fidelity 0.4.0's definition): polynomial kernel
  ``(x.y / d + 1)^3``, unbiased MMD^2 estimate, ``subsets`` random subsets of ``subset_size``
  drawn without replacement by ``np.random.RandomState(seed)`` in torch-fidelity's order
  (first set then second set, per subset); mean and population std over subsets."""
from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

__all__ = ["feature_statistics", "frechet_distance", "frechet_distance_low_rank", "joint_support", "inception_score", "knn_radii", "precision_recall",
           "kid", "polynomial_mmd2_unbiased"]


def feature_statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``np.cov(rowvar=False)``, unbiased, float64) of an [N, D] feature array."""
    feats = np.asarray(feats)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"feature_statistics needs an [N, D] array with N >= 2, got shape {feats.shape}")
    # np.cov converts to float64 itself (one copy); the mean is accumulated in float64
    return feats.mean(axis=0, dtype=np.float64), np.cov(feats, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between two Gaussians, exactly as ADM's ``FIDStatistics.frechet_distance``."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different lengths: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances have different dimensions: {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    # no ``disp``: deprecated since SciPy 1.16 (ADM passed disp=False only to silence a printout)
    with warnings.catch_warnings():  # a singular product is handled below, as in ADM
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"Fréchet distance: singular covariance product; adding {eps} to the diagonals")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _factor(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, A) with ``np.cov(feats, rowvar=False) == A @ A.T``, A = centred features^T / sqrt(N-1)."""
    feats = np.asarray(feats)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"feature_statistics needs an [N, D] array with N >= 2, got shape {feats.shape}")
    mu = feats.mean(axis=0, dtype=np.float64)
    return mu, (feats.astype(np.float64) - mu).T / np.sqrt(len(feats) - 1)


def frechet_distance_low_rank(feats1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet distance between the Gaussian of ``feats1`` ([N, D]) and (mu2, sigma2), exactly,
    through an N x N eigenproblem (module docstring): for N <= D, where ``frechet_distance`` would
    take the square root of a singular D x D matrix."""
    mu1, a = _factor(feats1)
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or sigma2.shape != (mu1.size, mu1.size):
        raise ValueError(f"features have {mu1.size} dimensions but the second Gaussian has mean {mu2.shape} "
                         f"and covariance {sigma2.shape}")
    m = a.T @ sigma2 @ a
    eig = np.linalg.eigvalsh((m + m.T) / 2)  # PSD up to round-off
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.einsum("ij,ij->", a, a) + np.trace(sigma2) - 2 * np.sqrt(np.clip(eig, 0, None)).sum())


def joint_support(feats1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> tuple[tuple, tuple, float]:
    """The two Gaussians restricted to the span Q of the first one's centred features and the mean
    difference (r <= N dimensions): ``((Q^T mu1, Q^T S1 Q), (Q^T mu2, Q^T S2 Q), tr S2 - tr Q^T S2 Q)``.
    Since S1 lives in Q, FD(full) = FD(restricted) + that residual trace exactly: an independent
    Fréchet code (clean-fid's) can check a distance with N <= D on r x r matrices."""
    mu1, a = _factor(feats1)
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    basis = np.concatenate([a, (mu1 - mu2)[:, None]], axis=1)
    u, sv, _ = np.linalg.svd(basis, full_matrices=False)
    q = u[:, sv > sv.max() * max(basis.shape) * np.finfo(np.float64).eps] if sv.size and sv.max() > 0 else u[:, :1]
    qa, qs2 = q.T @ a, q.T @ sigma2 @ q
    return (q.T @ mu1, qa @ qa.T), (q.T @ mu2, qs2), float(np.trace(sigma2) - np.trace(qs2))


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def inception_score(logits_or_probs: np.ndarray, split_size: int = 5000, from_logits: bool = True) -> float:
    """ADM's Inception score: mean over consecutive splits of ``split_size`` (the last split is the
    remainder) of ``exp(mean_x KL(p(y|x) || p(y)))``. ``from_logits=False`` takes probabilities."""
    a = np.asarray(logits_or_probs, dtype=np.float64)
    if a.ndim != 2 or len(a) == 0:
        raise ValueError(f"inception_score needs an [N, classes] array with N >= 1, got shape {a.shape}")
    if split_size < 1:
        raise ValueError(f"split_size must be >= 1, got {split_size}")
    if from_logits:
        log_p = _log_softmax(a)
    else:
        with np.errstate(divide="ignore"):
            log_p = np.log(a)
    p = np.exp(log_p)
    scores = []
    for i in range(0, len(p), split_size):
        part, log_part = p[i:i + split_size], log_p[i:i + split_size]
        log_marginal = np.log(part.mean(axis=0, keepdims=True))
        with np.errstate(invalid="ignore"):  # 0 * -inf where a probability is exactly 0: counts 0
            kl = np.where(part > 0, part * (log_part - log_marginal), 0.0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))


def _sq_dist_block(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    d = a @ b.T
    d *= -2
    d += a_sq[:, None]
    d += b_sq[None, :]
    np.maximum(d, 0, out=d)
    return d


class _Blocks:
    """Centred, dtype-converted row blocks of a feature array (converted lazily, one block at a time)."""

    def __init__(self, feats: np.ndarray, centre: np.ndarray, dtype, chunk: int):
        self.feats, self.centre, self.dtype, self.chunk = feats, centre, dtype, chunk
        self.n = len(feats)
        # squared norms in float64 from the centred rows, then cast
        self.sq = np.empty(self.n, dtype=dtype)
        for s in range(0, self.n, chunk):
            blk = self.block(s)
            self.sq[s:s + len(blk)] = np.einsum("ij,ij->i", blk, blk)

    def block(self, start: int) -> np.ndarray:
        blk = self.feats[start:start + self.chunk].astype(np.float64) - self.centre
        return blk.astype(self.dtype, copy=False)

    def starts(self):
        return range(0, self.n, self.chunk)


def _check_feats(name: str, feats: np.ndarray) -> np.ndarray:
    feats = np.asarray(feats)
    if feats.ndim != 2:
        raise ValueError(f"{name}: expected an [N, D] array, got shape {feats.shape}")
    if not np.isfinite(feats).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return feats


def _radii(blocks: _Blocks, k: int) -> np.ndarray:
    """Squared distance to the k-th nearest neighbour (column k of the row incl. the self-distance)."""
    if blocks.n <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points per set, got {blocks.n}")
    radii = np.empty(blocks.n, dtype=blocks.dtype)
    for r0 in blocks.starts():
        rows = blocks.block(r0)
        rsq = blocks.sq[r0:r0 + len(rows)]
        best = None  # running k+1 smallest per row
        for c0 in blocks.starts():
            d = _sq_dist_block(rows, rsq, blocks.block(c0) if c0 != r0 else rows, blocks.sq[c0:c0 + blocks.chunk])
            if best is not None:
                d = np.concatenate([best, d], axis=1)
            if d.shape[1] > k + 1:
                d = np.partition(d, k, axis=1)[:, :k + 1]
            best = d
        radii[r0:r0 + len(rows)] = np.partition(best, k, axis=1)[:, k]
    return radii


def knn_radii(feats: np.ndarray, k: int = 3, chunk: int = 4096, dtype=np.float32,
              centre: np.ndarray | None = None) -> np.ndarray:
    """Squared k-NN radius of every row (ADM semantics; see the module docstring)."""
    feats = _check_feats("features", feats)
    centre = feats.mean(axis=0, dtype=np.float64) if centre is None else centre
    return _radii(_Blocks(feats, centre, np.dtype(dtype), chunk), k)


def precision_recall(real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 3, chunk: int = 4096,
                     dtype=np.float32) -> tuple[float, float]:
    """Improved precision and recall (ADM semantics, k=3 by default): returns ``(precision, recall)``.

    Memory: the inputs plus a few ``chunk x chunk`` distance blocks (float32 default: 64 MiB each at
    chunk=4096); ``dtype=np.float64`` for double-precision distances."""
    real = _check_feats("reference features", real_feats)
    fake = _check_feats("sample features", fake_feats)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: reference {real.shape[1]}, samples {fake.shape[1]}")
    dtype = np.dtype(dtype)
    centre = real.mean(axis=0, dtype=np.float64)
    rb, fb = _Blocks(real, centre, dtype, chunk), _Blocks(fake, centre, dtype, chunk)
    real_r, fake_r = _radii(rb, k), _radii(fb, k)
    fake_in = np.zeros(fb.n, dtype=bool)  # sample inside some reference ball -> precision
    real_in = np.zeros(rb.n, dtype=bool)  # reference inside some sample ball -> recall
    for r0 in rb.starts():
        rows = rb.block(r0)
        rr = real_r[r0:r0 + len(rows)]
        for f0 in fb.starts():
            d = _sq_dist_block(rows, rb.sq[r0:r0 + len(rows)], fb.block(f0), fb.sq[f0:f0 + chunk])
            fr = fake_r[f0:f0 + d.shape[1]]
            fake_in[f0:f0 + d.shape[1]] |= (d <= rr[:, None]).any(axis=0)
            real_in[r0:r0 + len(rows)] |= (d <= fr[None, :]).any(axis=1)
    return float(fake_in.mean()), float(real_in.mean())


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                             coef0: float = 1.0) -> float:
    """Unbiased MMD^2 between equal-size sets with the kernel ``(gamma x.y + coef0)^degree``
    (gamma defaults to 1/D): off-diagonal means of K_xx and K_yy minus twice the full mean of K_xy."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m = len(x)
    if len(y) != m or m < 2:
        raise ValueError(f"polynomial MMD needs two sets of equal size >= 2, got {len(x)} and {len(y)}")
    gamma = 1.0 / x.shape[1] if gamma is None else gamma

    def kernel(a, b):
        base = a @ b.T * gamma + coef0
        if degree == 3:  # repeated products: much faster than np.power with an integer exponent
            return base * base * base
        return base ** degree

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off - 2 * kxy.sum() / (m * m))


def kid(fake_feats: np.ndarray, real_feats: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 2020, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> dict:
    """Kernel Inception Distance as torch-fidelity 0.4.0 computes it (``input1`` = samples first).
    ``subset_size`` is reduced to the smaller set's size when needed (torch-fidelity would refuse).
    Returns ``{"kid_mean", "kid_std", "kid_subsets", "kid_subset_size"}``."""
    fake = _check_feats("sample features", fake_feats)
    real = _check_feats("reference features", real_feats)
    size = min(subset_size, len(fake), len(real))
    if size < 2:
        raise ValueError(f"KID needs at least 2 points per set, got {len(fake)} and {len(real)}")
    rng = np.random.RandomState(seed)
    mmds = np.empty(subsets)
    for i in range(subsets):
        f = fake[rng.choice(len(fake), size, replace=False)]
        r = real[rng.choice(len(real), size, replace=False)]
        mmds[i] = polynomial_mmd2_unbiased(f, r, degree, gamma, coef0)
    return {"kid_mean": float(mmds.mean()), "kid_std": float(mmds.std()), "kid_subsets": subsets,
            "kid_subset_size": size}
