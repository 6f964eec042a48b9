"""Evaluate an ADM-format sample batch against a reference batch: IS, FID, sFID, precision, recall
(ADM protocol, :mod:`l2c.metrics.adm`), KID, and optionally paired fidelity (MSE / PSNR) against the
samples of the uncached model.

Back-ends: ``digits`` (the embedded digits CNN, default weights
``l2c/assets/embedded/features-digits.pt``; reference statistics always computed from the
reference ``arr_0``) and ``inception-adm`` (torch-fidelity's Inception port plus the sFID tap;
reference statistics taken from the file's ``mu``/``sigma``/``mu_s``/``sigma_s`` when present, as ADM
does). Precision/recall and KID always use the reference ``arr_0`` features.

Every evaluation cross-checks its FID through clean-fid's own API (:mod:`l2c.metrics.crosscheck`):
by default clean-fid's feature loop with the same network as its custom feature extractor, then
clean-fid's statistics and Fréchet distance against the same reference statistics
(``cleanfid="frechet"``: clean-fid's Fréchet distance on our statistics only, without the feature
pass). The number is recorded (``fid_cleanfid``, details in ``cleanfid``) and a relative
disagreement above 1e-3 is an ``L2CError`` naming both numbers. Cost: one more feature pass over
the samples and one more matrix square root (for 2048-d Inception features, seconds on a GPU
node's CPU; about a minute on 2 shared cores).

Reference features (``feature_cache``): the reference batch's features can be kept in a folder,
one ``.npz`` per (sha256 of the reference file, extractor and the sha256 of its weights, layers,
batch size, device, torch and numpy versions, sha256 of the feature code), so the evaluations of a
grid that share a reference extract them once. A cached file
is read without unpickling and used only when its recorded key and shapes match; a missing or
damaged one is recomputed and rewritten atomically. The features are the same either way.

JSON convention (:func:`write_evaluation`): non-finite numbers are written as ``null``. The only
expected one is ``paired.psnr_db`` (PSNR of the mean MSE), which is ``inf`` in Python and ``null``
in JSON when the two files are identical (mean MSE 0). Per-sample PSNRs are capped at
``PSNR_CAP_DB`` = 100 dB before averaging (an identical image counts 100 dB), so
``paired.psnr_mean_db`` is always finite; ``paired.n_identical`` counts identical images."""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from ..io import L2CError, environment_record, write_json, write_npz
from . import adm
from .crosscheck import check_agreement, cleanfid_fid
from .features import (EMBEDDED_DIGITS_WEIGHTS, INCEPTION_ADM_NAME, AdmInceptionExtractor, DigitsFidelityExtractor,
                       digits_extractor_name, sha256_file)
from .npz import NpzBatch, check_compatible, open_npz

BACKENDS = ("digits", "inception-adm")
PSNR_CAP_DB = 100.0
PR_K = 3
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 2020  # torch-fidelity's default rng_seed
DEFAULT_BATCH_SIZE = {"digits": 500, "inception-adm": 64}
CLEANFID_CHECKS = ("full", "frechet")


def make_extractor(backend: str, weights: str | Path | None = None, device: str | torch.device = "cpu",
                   allow_download: bool = False, random_weights: bool = False):
    """The feature extractor of a back-end and a description of it.

    Returns ``(extractor, info, layers)``: ``layers`` maps ``pool`` / ``spatial`` / ``logits`` to the
    extractor's feature names; ``info`` has ``feature_extractor`` (name incl. weights hash),
    ``weights`` and ``weights_sha256``."""
    if backend == "digits":
        path = Path(weights) if weights is not None else EMBEDDED_DIGITS_WEIGHTS
        if not path.exists():
            raise L2CError(f"digits feature weights {path}: file not found"
                           + (" (train them with `python -m l2c.metrics.features`)" if weights is None else ""))
        sha = sha256_file(path)
        name = digits_extractor_name(sha)
        layers = {"pool": "pool", "spatial": "spatial", "logits": "logits_unbiased"}
        ext = DigitsFidelityExtractor(name, list(layers.values()), feature_extractor_weights_path=str(path))
    elif backend == "inception-adm":
        layers = {"pool": "2048", "spatial": "spatial", "logits": "logits_unbiased"}
        ext = AdmInceptionExtractor(INCEPTION_ADM_NAME, list(layers.values()), feature_extractor_weights_path=weights,
                                    allow_download=allow_download, random_weights=random_weights)
        if random_weights:
            path, sha, name = None, None, f"{INCEPTION_ADM_NAME}-RANDOM"
        else:
            path = Path(ext.weights_path)
            sha = sha256_file(path)
            name = f"{INCEPTION_ADM_NAME}-{sha[:8]}"
    else:
        raise L2CError(f"unknown metrics back-end {backend!r}; choose one of {', '.join(BACKENDS)}")
    ext.requires_grad_(False).eval().to(device)
    return ext, {"feature_extractor": name, "weights": str(path) if path else None, "weights_sha256": sha}, layers


@torch.no_grad()
def extract_features(batch: NpzBatch, extractor, layers: dict[str, str], batch_size: int,
                     device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """Run the extractor over ``arr_0`` in file order; returns float32 arrays keyed like ``layers``."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in layers}
    names = list(extractor.features_list)
    for imgs in batch.iter_batches(batch_size):
        x = torch.from_numpy(np.array(imgs)).permute(0, 3, 1, 2).to(device)
        feats = dict(zip(names, extractor(x)))
        for k, layer in layers.items():
            out[k].append(feats[layer].float().cpu().numpy())
    return {k: np.concatenate(v, axis=0) for k, v in out.items()}


def reference_features(ref: NpzBatch, extractor, layers: dict[str, str], batch_size: int, device: torch.device,
                       extractor_name: str, weights_sha256: str | None,
                       cache: str | Path | None) -> tuple[dict[str, np.ndarray], str]:
    """:func:`extract_features` of the reference batch, through the content-addressed ``cache``
    folder when given (module docstring). Returns the features and where they came from."""
    if cache is None:
        return extract_features(ref, extractor, layers, batch_size, device), "computed"
    import hashlib
    import inspect
    import json
    code = sorted({inspect.getsourcefile(type(extractor)), __file__})  # the extractor's and this module's code
    ident = {"reference_sha256": sha256_file(ref.path), "extractor": extractor_name, "weights_sha256": weights_sha256,
             "layers": layers, "batch_size": batch_size, "device": device.type,
             "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
             "torch": torch.__version__, "numpy": np.__version__, "code": [sha256_file(f) for f in code]}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
    path = Path(cache) / f"reference-features-{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                feats = {k: f[k] for k in layers}
                ok = str(f["key"].reshape(-1)[0]) == key and all(v.ndim == 2 and len(v) == ref.n for v in feats.values())
            if ok:
                return feats, f"cache {path}"
        except Exception:  # damaged or foreign: recomputed below
            pass
    feats = extract_features(ref, extractor, layers, batch_size, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_npz(path, key=np.array(key), **feats)
    return feats, f"computed, cached as {path}"


def paired_fidelity(samples: NpzBatch, full: NpzBatch, batch_size: int = 1000) -> dict:
    """Per-sample MSE of [0, 1]-scaled images against the uncached model's samples (same seeds,
    same order): mean MSE, mean of per-sample PSNR (capped at ``PSNR_CAP_DB``), PSNR of the mean MSE.
    Requires identical shapes and identical labels (both absent, or equal)."""
    if samples.shape != full.shape:
        raise L2CError(f"paired fidelity: samples file {samples.path} has shape {samples.shape} but the reference "
                       f"samples {full.path} have {full.shape}; pair files sampled with the same seeds and settings")
    la, lb = samples.labels(), full.labels()
    if (la is None) != (lb is None) or (la is not None and not np.array_equal(la, lb)):
        raise L2CError(f"paired fidelity: labels of {samples.path} and {full.path} differ "
                       f"({'one file has no arr_1' if (la is None) != (lb is None) else 'arr_1 not equal'}); "
                       "pair files sampled with the same seeds and class labels")
    mses = []
    for a, b in zip(samples.iter_batches(batch_size), full.iter_batches(batch_size)):
        d = (a.astype(np.float64) - b.astype(np.float64)) / 255.0
        mses.append((d * d).reshape(len(d), -1).mean(axis=1))
    mse = np.concatenate(mses)
    with np.errstate(divide="ignore"):
        psnr = np.minimum(10 * np.log10(1.0 / mse), PSNR_CAP_DB)
    mean_mse = float(mse.mean())
    return {
        "paired_with": str(full.path),
        "n": int(len(mse)),
        "mse_mean": mean_mse,
        "mse_std": float(mse.std()),
        "psnr_mean_db": float(psnr.mean()),
        "psnr_db": math.inf if mean_mse == 0 else float(10 * math.log10(1.0 / mean_mse)),
        "psnr_cap_db": PSNR_CAP_DB,
        "n_identical": int((mse == 0).sum()),
    }


def fid_of(feats: np.ndarray, ref_stats: tuple[np.ndarray, np.ndarray]) -> float:
    """The Fréchet distance of ``feats`` ([N, D]) to the reference (mu, sigma): ADM's computation, or
    for N <= D the exact N x N form (``l2c.metrics.adm``)."""
    if len(feats) <= feats.shape[1]:
        return adm.frechet_distance_low_rank(feats, *ref_stats)
    return adm.frechet_distance(*adm.feature_statistics(feats), *ref_stats)


def evaluate(samples_npz: str | Path, ref_npz: str | Path, backend: str = "digits", weights: str | Path | None = None,
             batch_size: int | None = None, device: str | torch.device = "cpu", paired_with: str | Path | None = None,
             kid: bool = True, split_size: int = 5000, allow_download: bool = False,
             pr_dtype=np.float32, cleanfid: str = "full", feature_cache: str | Path | None = None) -> dict:
    """Evaluate ``samples_npz`` against ``ref_npz`` (see the module docstring). Returns a dict with
    ``inception_score``, ``fid``, ``sfid``, ``precision``, ``recall``, ``kid_mean``/``kid_std`` (when
    ``kid``), ``paired`` (when ``paired_with``), and provenance: backend, extractor name with weights
    hash, counts, reference-statistics source, timings, environment; ``fid_cleanfid`` and
    ``cleanfid`` hold clean-fid's recomputation (``cleanfid``: ``full`` or ``frechet``, see the
    module docstring); ``feature_cache``: a folder for the reference features (module docstring)."""
    t_start = time.time()
    if backend not in BACKENDS:
        raise L2CError(f"unknown metrics back-end {backend!r}; choose one of {', '.join(BACKENDS)}")
    if cleanfid not in CLEANFID_CHECKS:
        raise L2CError(f"clean-fid cross-check {cleanfid!r}: expected one of {', '.join(CLEANFID_CHECKS)}")
    samples = open_npz(samples_npz, "samples")
    ref = open_npz(ref_npz, "reference")
    check_compatible(samples, ref)
    if backend == "digits" and samples.resolution != (8, 8):
        raise L2CError(f"samples file {samples.path}: the digits back-end needs 8x8 images, got "
                       f"{samples.resolution[0]}x{samples.resolution[1]}; use --backend inception-adm")
    paired = open_npz(paired_with, "paired (uncached) samples") if paired_with is not None else None
    batch_size = batch_size or DEFAULT_BATCH_SIZE[backend]
    device = torch.device(device)

    timings = {}
    t = time.time()
    extractor, info, layers = make_extractor(backend, weights, device, allow_download)
    timings["load_extractor_s"] = time.time() - t
    t = time.time()
    fs = extract_features(samples, extractor, layers, batch_size, device)
    timings["features_samples_s"] = time.time() - t
    t = time.time()
    fr, fr_source = reference_features(ref, extractor, {"pool": layers["pool"], "spatial": layers["spatial"]}, batch_size,
                                       device, info["feature_extractor"], info["weights_sha256"], feature_cache)
    timings["features_reference_s"] = time.time() - t

    t = time.time()
    file_stats = ref.statistics() if backend == "inception-adm" else {}
    sources = {}
    ref_stats = {}
    for kind, (m, s) in (("pool", ("mu", "sigma")), ("spatial", ("mu_s", "sigma_s"))):
        if m in file_stats:
            if file_stats[m].shape[0] != fs[kind].shape[1]:
                raise L2CError(f"reference file {ref.path}: {m} has {file_stats[m].shape[0]} dimensions but the "
                               f"{backend} {kind} features have {fs[kind].shape[1]}")
            ref_stats[kind] = (file_stats[m], file_stats[s])
            sources[kind] = f"file ({m}, {s})"
        else:
            ref_stats[kind] = adm.feature_statistics(fr[kind])
            sources[kind] = "computed from reference arr_0"
    res = {}
    res["inception_score"] = adm.inception_score(fs["logits"], split_size=split_size)
    if samples.n >= 2:
        for key, kind in (("fid", "pool"), ("sfid", "spatial")):
            res[key] = fid_of(fs[kind], ref_stats[kind])
        res["fid_method"] = ("N x N eigenvalues (N <= D)" if samples.n <= fs["pool"].shape[1]
                             else "ADM: scipy sqrtm of the D x D product")
    else:
        res["fid"] = res["sfid"] = None
    timings["fid_is_s"] = time.time() - t
    if res["fid"] is not None:
        t = time.time()
        check = cleanfid_fid(samples, extractor, layers["pool"], fs["pool"], ref_stats["pool"], batch_size, device,
                             features=cleanfid == "full")
        traces = float(np.var(fs["pool"], axis=0, ddof=1, dtype=np.float64).sum() + np.trace(ref_stats["pool"][1]))
        check["max_relative_difference"] = check_agreement(res["fid"], check, traces, source=str(samples.path))
        res["fid_cleanfid"] = check["fid_features" if cleanfid == "full" else "fid_frechet"]
        res["cleanfid"] = check
        timings["cleanfid_s"] = time.time() - t
    t = time.time()
    if samples.n > PR_K and ref.n > PR_K:
        res["precision"], res["recall"] = adm.precision_recall(fr["pool"], fs["pool"], k=PR_K, dtype=pr_dtype)
    else:
        res["precision"] = res["recall"] = None
    timings["precision_recall_s"] = time.time() - t
    if kid and samples.n >= 2 and ref.n >= 2:
        t = time.time()
        res.update(adm.kid(fs["pool"], fr["pool"], subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=KID_SEED))
        timings["kid_s"] = time.time() - t
    if paired is not None:
        t = time.time()
        res["paired"] = paired_fidelity(samples, paired)
        timings["paired_s"] = time.time() - t
    timings["total_s"] = time.time() - t_start

    n_splits = -(-samples.n // split_size)
    return {
        "backend": backend,
        **info,
        "samples": str(samples.path),
        "reference": str(ref.path),
        "n_samples": samples.n,
        "n_ref": ref.n,
        "image_shape": list(samples.shape[1:]),
        "feature_dims": {k: int(v.shape[1]) for k, v in fs.items()},
        "reference_statistics": sources,
        "reference_features": fr_source,
        "is_split_size": split_size,
        "is_num_splits": n_splits,
        "is_last_split_size": samples.n - (n_splits - 1) * split_size,
        "pr_k": PR_K,
        "pr_distance_dtype": np.dtype(pr_dtype).name,
        **res,
        "timing": {k: round(v, 4) for k, v in timings.items()},
        "environment": environment_record(device, "float32"),
    }


def _finite_or_none(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite_or_none(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite_or_none(v) for v in o]
    return o


def write_evaluation(result: dict, out_json: str | Path) -> None:
    """Write an :func:`evaluate` result atomically as strict JSON (non-finite numbers -> null)."""
    write_json(out_json, _finite_or_none(result))
