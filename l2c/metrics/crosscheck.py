"""FID recomputed through clean-fid's own API, as an independent check of every evaluation.

One recomputation per evaluation, recorded beside the suite's FID (:func:`cleanfid_fid`):

- ``fid_features`` (``check="full"``, the default): the sample features extracted again by
  clean-fid's feature loop (``cleanfid.fid.get_model_features``, the loop that
  ``compute_fid(gen=...)`` / ``fid_model`` run with ``custom_feat_extractor`` as the feature model)
  with the *same* feature network as the custom extractor, fed the sample file's images in file
  order by a generator that ignores its latent; then clean-fid's own mean / ``np.cov`` statistics
  and ``cleanfid.fid.frechet_distance`` against the same reference statistics. This checks
  feature extraction, statistics and the distance end to end, at the cost of one more feature
  pass over the samples and one more matrix square root;
- ``fid_frechet`` (``check="frechet"``): ``cleanfid.fid.frechet_distance`` on the suite's own
  statistics: the Fréchet maths only (one matrix square root, no feature pass).

With no more samples than feature dimensions (a test, a rehearsal), the suite computes FID through
an N x N eigenproblem (``l2c.metrics.adm.frechet_distance_low_rank``) and clean-fid's
``frechet_distance`` runs on the two Gaussians restricted to their joint support (the span of the
centred sample features and the mean difference, r <= N dimensions), plus the exact residual trace
of the reference covariance outside it: the same distance, two independent square-root codes.

clean-fid runs in its ``legacy_tensorflow`` mode, the one where images reach the feature model
unresized (our networks resize inside, as the TF Inception graph does); nothing is downloaded,
as no clean-fid feature network or reference statistics are ever built. The reference statistics
are the ones the suite used (from the reference file's ``mu``/``sigma`` when it has them).

Agreement rule: ``|ours - theirs| <= rtol * max(|ours|, |theirs|) + atol_scale * (tr S1 + tr S2)``
with ``rtol = 1e-3``. The absolute term (``atol_scale = 1e-6`` of the covariance traces) covers
the round-off of FID = |dmu|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2), which cancels terms of size
tr S1 + tr S2 and so cannot be relatively accurate when the FID itself is near zero (a set against
itself). A larger disagreement raises an :class:`~l2c.io.L2CError` naming both numbers."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import torch

from ..io import L2CError
from . import adm
from .npz import NpzBatch

log = logging.getLogger("l2c.metrics")

RTOL = 1e-3
ATOL_SCALE = 1e-6


class _SampleFileGenerator:
    """A clean-fid "generator" that returns the next images of a sample file (uint8 NCHW) on each
    call, ignoring the latent clean-fid draws."""

    def __init__(self, batch: NpzBatch, batch_size: int, device: torch.device):
        self._it = batch.iter_batches(batch_size)
        self.device = device

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        imgs = next(self._it)
        return torch.from_numpy(np.array(imgs)).permute(0, 3, 1, 2).to(self.device)


class _FeatureModel:
    """The suite's extractor as clean-fid's ``custom_feat_extractor``: a callable from an image
    batch to an [N, D] feature tensor (the ``layer`` output)."""

    def __init__(self, extractor, layer: str):
        self.extractor, self.layer = extractor, layer

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:  # clean-fid's other loops hand [0, 255] floats
            x = x.round().clamp(0, 255).to(torch.uint8)
        names = list(self.extractor.features_list)
        return dict(zip(names, self.extractor(x)))[self.layer].float()


def _cleanfid():
    try:
        from cleanfid import fid
    except ImportError as e:
        raise L2CError(f"the FID cross-check needs clean-fid, a dependency of l2c-suite ({e}); "
                       "reinstall the suite: pip install -e .") from None
    return fid


def _cleanfid_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """``cleanfid.fid.frechet_distance`` with its printout routed to the log and SciPy's
    deprecation of its ``disp`` argument silenced."""
    cfid = _cleanfid()
    out = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out):
        warnings.simplefilter("ignore", DeprecationWarning)
        from scipy import linalg
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        try:
            d = cfid.frechet_distance(mu1, sigma1, mu2, sigma2)
        except ValueError as e:  # clean-fid's "Imaginary component" refusal
            raise L2CError(f"clean-fid cross-check: clean-fid's frechet_distance refused the statistics ({e})") from e
    if out.getvalue().strip():
        log.info("clean-fid: %s", out.getvalue().strip())
    return float(d)


def _cleanfid_distance(feats: np.ndarray, ref_stats: tuple[np.ndarray, np.ndarray], ours: bool = False) -> float:
    """clean-fid's Fréchet distance of ``feats`` to the reference statistics; with no more samples
    than dimensions, on the Gaussians restricted to their joint support plus the exact residual
    trace (``l2c.metrics.adm.joint_support``): r x r matrices instead of a singular D x D one.
    ``ours``: the suite's statistics (float64 mean) rather than clean-fid's ``np.mean`` / ``np.cov``."""
    if len(feats) <= feats.shape[1]:
        (mu1, s1), (mu2, s2), residual = adm.joint_support(feats, *ref_stats)
        return _cleanfid_frechet(mu1, s1, mu2, s2) + residual
    stats = adm.feature_statistics(feats) if ours else (np.mean(feats, axis=0), np.cov(feats, rowvar=False))
    return _cleanfid_frechet(*stats, *ref_stats)


def cleanfid_fid(samples: NpzBatch, extractor, layer: str, sample_feats: np.ndarray,
                 ref_stats: tuple[np.ndarray, np.ndarray], batch_size: int, device: torch.device | str = "cpu",
                 features: bool = True) -> dict:
    """clean-fid's FID of the samples (see the module docstring): ``fid_features`` when ``features``,
    else ``fid_frechet`` (on ``sample_feats``, the suite's own features)."""
    from importlib.metadata import version
    cfid = _cleanfid()
    device = torch.device(device)
    res = {"cleanfid_version": version("clean-fid"), "mode": "legacy_tensorflow (features unresized)"}
    if len(sample_feats) <= sample_feats.shape[1]:
        res["support"] = "joint support of the two Gaussians (N <= D) plus the residual trace"
    if not features:
        res["fid_frechet"] = _cleanfid_distance(np.asarray(sample_feats), ref_stats, ours=True)
    else:
        with torch.random.fork_rng(devices=[]):  # clean-fid draws latents from the global generator
            feats = cfid.get_model_features(_SampleFileGenerator(samples, batch_size, device), _FeatureModel(extractor, layer),
                                            mode="legacy_tensorflow", z_dim=1, num_gen=samples.n, batch_size=batch_size,
                                            device=device, verbose=False)
        if feats.shape[0] != samples.n:
            raise L2CError(f"clean-fid cross-check: got {feats.shape[0]} feature rows for {samples.n} samples")
        res["fid_features"] = _cleanfid_distance(feats, ref_stats)
    return res


def check_agreement(fid: float, check: dict, traces: float, source: str = "") -> float:
    """Raise an ``L2CError`` naming both numbers when a clean-fid FID disagrees with ``fid`` (rule in
    the module docstring; ``traces``: tr S1 + tr S2); returns the largest relative disagreement."""
    atol = ATOL_SCALE * float(traces)
    worst = 0.0
    for key in ("fid_frechet", "fid_features"):
        if key not in check:
            continue
        theirs = check[key]
        scale = max(abs(fid), abs(theirs))
        rel = abs(fid - theirs) / scale if scale > 0 else 0.0
        worst = max(worst, rel)
        if not np.isfinite(theirs) or abs(fid - theirs) > RTOL * scale + atol:
            what = ("its Fréchet distance on our statistics" if key == "fid_frechet"
                    else "its feature loop with the same network and its Fréchet distance")
            raise L2CError(f"clean-fid cross-check failed{' for ' + source if source else ''}: our FID {fid:.6g} but "
                           f"clean-fid ({what}) gives {theirs:.6g} (relative difference {rel:.2e} > {RTOL:g}); "
                           "the metric code or the feature extraction is not deterministic: report this")
    return worst
