"""Metrics: ADM maths against naive reference computations, npz validation, the digits feature
network, torch-fidelity registration (offline), evaluate(), paired fidelity, Inception shapes."""
from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import torch

from l2c.io import L2CError
from l2c.metrics import adm
from l2c.metrics.features import (EMBEDDED_DIGITS_WEIGHTS, INCEPTION_WEIGHTS_FILE, INCEPTION_WEIGHTS_URL,
                                  AdmInceptionExtractor, DigitsFeatureNet, load_digits_net, record_path,
                                  register_digits_extractor, resolve_inception_weights, sha256_file,
                                  train_digit_features)
from l2c.metrics.npz import check_compatible, open_npz, write_samples_npz

REL = 1e-6


@pytest.fixture(scope="module", autouse=True)
def _single_blas_thread():
    """Small matrices: a multi-threaded BLAS only spins on a busy CI machine (3x slower here)."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def rel_close(a, b, rel=REL, abs_=1e-12):
    return abs(a - b) <= rel * max(abs(a), abs(b)) + abs_


# ---------------------------------------------------------------------------------------------
# naive references


def naive_sq_dists(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def naive_pr(real, fake, k=3):
    r_rad = np.sort(naive_sq_dists(real, real), axis=1)[:, k]  # column k: self-distance is column 0
    f_rad = np.sort(naive_sq_dists(fake, fake), axis=1)[:, k]
    d = naive_sq_dists(real, fake)  # [R, F]
    precision = np.mean([(d[:, j] <= r_rad).any() for j in range(len(fake))])
    recall = np.mean([(d[i, :] <= f_rad).any() for i in range(len(real))])
    return precision, recall, r_rad, f_rad


def naive_is(logits, split_size):
    scores = []
    for s in range(0, len(logits), split_size):
        part = logits[s:s + split_size].astype(np.float64)
        p = np.exp(part) / np.exp(part).sum(1, keepdims=True)
        py = p.mean(0)
        kl = [sum(p[i, c] * math.log(p[i, c] / py[c]) for c in range(p.shape[1])) for i in range(len(p))]
        scores.append(math.exp(sum(kl) / len(kl)))
    return float(np.mean(scores))


def naive_mmd2(x, y):
    d, m = x.shape[1], len(x)
    k = lambda a, b: (float(a @ b) / d + 1) ** 3  # noqa: E731
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return (sxx + syy) / (m * (m - 1)) - 2 * sxy / (m * m)


# ---------------------------------------------------------------------------------------------
# ADM maths


def test_feature_statistics_matches_definition():
    x = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    mu, sigma = adm.feature_statistics(x)
    x64 = x.astype(np.float64)
    c = x64 - x64.mean(0)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x64.mean(0), rtol=REL)
    np.testing.assert_allclose(sigma, c.T @ c / (len(x) - 1), rtol=REL, atol=1e-12)


def test_low_rank_frechet_distance_is_the_same_distance():
    """N <= D: the N x N eigenvalue form equals ADM's sqrtm of the D x D product (to its round-off on
    a singular product), and the joint-support restriction plus residual trace equals both; a wrong
    second covariance changes it."""
    rng = np.random.default_rng(3)
    d = 96
    y = rng.normal(size=(200, d)) @ rng.normal(size=(d, d)) * 0.2 + 0.5
    mu2, s2 = adm.feature_statistics(y)
    for n in (2, 9, 40):
        x = rng.normal(size=(n, d)).astype(np.float32)
        ours = adm.frechet_distance_low_rank(x, mu2, s2)
        assert rel_close(ours, adm.frechet_distance(*adm.feature_statistics(x), mu2, s2), 1e-6)
        (m1, c1), (m2, c2), residual = adm.joint_support(x, mu2, s2)
        assert c1.shape[0] <= n and residual >= 0
        assert rel_close(adm.frechet_distance(m1, c1, m2, c2) + residual, ours, 1e-9)
        assert not rel_close(adm.frechet_distance_low_rank(x, mu2, 2 * s2), ours, 1e-3)
    with pytest.raises(ValueError, match="96 dimensions"):
        adm.frechet_distance_low_rank(x, mu2[:5], s2)


def test_frechet_distance_against_eigen_reference():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((200, 5)), rng.standard_normal((150, 5)) @ rng.standard_normal((5, 5)) + 0.3
    mu1, s1 = adm.feature_statistics(a)
    mu2, s2 = adm.feature_statistics(b)
    # tr sqrt(s1 s2) = sum sqrt(eig(s1^1/2 s2 s1^1/2)), with symmetric eigendecompositions only
    w, v = np.linalg.eigh(s1)
    r = v @ np.diag(np.sqrt(w)) @ v.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(r @ s2 @ r), 0, None)).sum()
    ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)
    assert rel_close(adm.frechet_distance(mu1, s1, mu2, s2), ref)
    # 1-D closed form: (m1 - m2)^2 + (sd1 - sd2)^2
    assert rel_close(adm.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])),
                     4.0 + 1.0)
    assert abs(adm.frechet_distance(mu1, s1, mu1, s1)) < 1e-8


def test_frechet_distance_error_paths(monkeypatch):
    with pytest.raises(ValueError, match="[Ii]maginary"):
        adm.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="lengths"):
        adm.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    # non-finite sqrtm -> retry with eps on the diagonals (ADM's fallback)
    calls = []
    real_sqrtm = adm.linalg.sqrtm

    def flaky(m):
        calls.append(m.copy())
        return np.full_like(m, np.nan) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(adm.linalg, "sqrtm", flaky)
    with pytest.warns(UserWarning, match="adding"):
        v = adm.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), eps=1e-3)
    np.testing.assert_allclose(calls[1], np.eye(2) * (1 + 1e-3) ** 2)
    assert rel_close(v, 2 + 2 - 2 * 2 * (1 + 1e-3))


def test_inception_score_against_naive_and_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric
    logits = np.random.default_rng(2).standard_normal((23, 7)) * 3
    # consecutive splits of 5, the last one is the remaining 3 (ADM's range(0, N, split_size))
    assert rel_close(adm.inception_score(logits, split_size=5), naive_is(logits, 5))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert rel_close(adm.inception_score(probs, split_size=5, from_logits=False), naive_is(logits, 5))
    # equal splits without shuffling = torch-fidelity's isc with shuffle=False
    tf = isc_features_to_metric(torch.from_numpy(logits[:20]), splits=4, shuffle=False)["inception_score_mean"]
    assert rel_close(adm.inception_score(logits[:20], split_size=5), tf)
    # limits: uniform predictions -> 1; confident and balanced over C classes -> C
    assert rel_close(adm.inception_score(np.zeros((10, 4))), 1.0)
    assert rel_close(adm.inception_score(np.eye(4)[np.arange(40) % 4] * 1000.0), 4.0)


@pytest.mark.parametrize("dtype,rel", [(np.float64, REL), (np.float32, 1e-4)])
def test_precision_recall_against_full_distance_matrices(dtype, rel):
    from torch_fidelity.metric_prc import calculate_precision_recall_full
    rng = np.random.default_rng(3)
    real = rng.standard_normal((70, 8)) + 5.0  # offset: exercises the centring
    fake = rng.standard_normal((45, 8)) * 0.9 + 5.6
    p_ref, r_ref, rr_ref, fr_ref = naive_pr(real, fake)
    # chunk=16 forces several row and column blocks (and a ragged last block)
    p, r = adm.precision_recall(real, fake, k=3, chunk=16, dtype=dtype)
    assert (p, r) == (p_ref, r_ref)
    np.testing.assert_allclose(adm.knn_radii(real, 3, chunk=16, dtype=dtype), rr_ref, rtol=rel)
    np.testing.assert_allclose(adm.knn_radii(fake, 3, chunk=16, dtype=dtype), fr_ref, rtol=rel)
    assert 0 < p < 1 and 0 < r < 1
    # torch-fidelity's full mode: features_1 = generated, features_2 = real
    tp, tr = calculate_precision_recall_full(torch.from_numpy(fake).float(), torch.from_numpy(real).float(), 3)
    assert (p, r) == pytest.approx((tp, tr))
    # one block or many: same answer
    assert adm.precision_recall(real, fake, chunk=4096, dtype=dtype) == (p, r)


def test_precision_recall_identical_sets_and_errors():
    x = np.random.default_rng(4).standard_normal((30, 4)).astype(np.float32)
    assert adm.precision_recall(x, x, chunk=7) == (1.0, 1.0)
    with pytest.raises(ValueError, match="more than 3"):
        adm.precision_recall(x[:3], x)
    with pytest.raises(ValueError, match="dimensions"):
        adm.precision_recall(x, x[:, :3])


def test_kid_against_naive_and_torch_fidelity():
    from torch_fidelity.metric_kid import kid_features_to_metric
    rng = np.random.default_rng(5)
    fake, real = rng.standard_normal((30, 5)), rng.standard_normal((26, 5)) + 0.2
    out = adm.kid(fake, real, subsets=3, subset_size=12, seed=7)
    # the same subsets torch-fidelity draws: RandomState(seed), per subset first set then second set
    rs = np.random.RandomState(7)
    mmds = []
    for _ in range(3):
        f = fake[rs.choice(30, 12, replace=False)]
        r = real[rs.choice(26, 12, replace=False)]
        mmds.append(naive_mmd2(f, r))
    assert rel_close(out["kid_mean"], np.mean(mmds)) and rel_close(out["kid_std"], np.std(mmds))
    tf = kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), kid_subsets=3, kid_subset_size=12,
                                rng_seed=7, verbose=False)
    assert rel_close(out["kid_mean"], tf["kernel_inception_distance_mean"])
    assert rel_close(out["kid_std"], tf["kernel_inception_distance_std"])
    # subset size falls back to the smaller set
    assert adm.kid(fake, real, subsets=2, subset_size=1000)["kid_subset_size"] == 26


# ---------------------------------------------------------------------------------------------
# npz files


def _imgs(n=6, h=8, w=8, c=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def test_npz_roundtrip_and_streaming(tmp_path):
    imgs, labels = _imgs(7, 5, 4, 3), np.arange(7)
    path = tmp_path / "s.npz"
    write_samples_npz(path, imgs, labels, mu=np.zeros(3), sigma=np.eye(3))
    b = open_npz(path)
    assert b.shape == (7, 5, 4, 3) and b.resolution == (5, 4) and b.channels == 3 and b.has_labels
    np.testing.assert_array_equal(b.images(), imgs)
    np.testing.assert_array_equal(np.concatenate(list(b.iter_batches(3))), imgs)
    np.testing.assert_array_equal(b.labels(), labels)
    assert set(b.statistics()) == {"mu", "sigma"}
    with np.load(path) as f:  # plain numpy reads it (ADM's evaluator uses np.load / zipfile)
        np.testing.assert_array_equal(f["arr_0"], imgs)


def test_npz_validation_errors(tmp_path):
    good = tmp_path / "good.npz"
    write_samples_npz(good, _imgs())

    def err(path, match, role="samples"):
        with pytest.raises(L2CError, match=match) as e:
            open_npz(path, role)
        assert str(path) in str(e.value)

    err(tmp_path / "missing.npz", "not found")
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    err(trunc, "truncated or corrupt")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all" * 10)
    err(junk, "truncated or corrupt")
    noarr = tmp_path / "noarr.npz"
    np.savez(noarr, images=_imgs())
    err(noarr, "no 'arr_0'")
    f32 = tmp_path / "f32.npz"
    np.savez(f32, arr_0=_imgs().astype(np.float32))
    err(f32, "dtype float32, expected uint8")
    three_d = tmp_path / "3d.npz"
    np.savez(three_d, arr_0=_imgs()[..., 0])
    err(three_d, "4 dimensions")
    nchw = tmp_path / "nchw.npz"
    np.savez(nchw, arr_0=_imgs(c=3).transpose(0, 3, 1, 2))
    err(nchw, "1 or 3 channels")
    badlab = tmp_path / "badlab.npz"
    np.savez(badlab, arr_0=_imgs(), arr_1=np.arange(5))
    err(badlab, "labels")
    empty = tmp_path / "empty.npz"
    np.savez(empty, arr_0=np.zeros((0, 8, 8, 1), np.uint8))
    err(empty, "0 images")
    # a member whose bytes were damaged after the header: caught when the data is read
    damaged = tmp_path / "damaged.npz"
    imgs = _imgs(50)
    with zipfile.ZipFile(damaged, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("arr_0.npy", "w") as f:
            np.lib.format.write_array(f, imgs)
    raw = bytearray(damaged.read_bytes())
    raw[200:260] = bytes(60)
    damaged.write_bytes(bytes(raw))
    with pytest.raises(L2CError, match="damaged.npz"):
        b = open_npz(damaged)
        list(b.iter_batches(10))
    # resolution mismatch between samples and reference
    other = tmp_path / "ref16.npz"
    write_samples_npz(other, _imgs(h=16, w=16))
    with pytest.raises(L2CError, match="8x8 images but reference file .*16x16"):
        check_compatible(open_npz(good), open_npz(other, "reference"))
    with pytest.raises(L2CError, match="uint8"):
        write_samples_npz(tmp_path / "x.npz", _imgs().astype(np.int16))


# ---------------------------------------------------------------------------------------------
# digits feature network


def test_committed_digits_weights_accuracy_and_record():
    from l2c.data import float_to_uint8, load_dataset
    net, sha = load_digits_net()
    assert EMBEDDED_DIGITS_WEIGHTS.stat().st_size < 2 * 2**20
    ref = load_dataset("digits:reference")
    with torch.no_grad():
        out = net(torch.from_numpy(float_to_uint8(ref.x)))  # the uint8 NHWC path, as in sample files
    assert out["pool"].shape == (500, DigitsFeatureNet.POOL_DIM)
    assert out["spatial"].shape == (500, DigitsFeatureNet.SPATIAL_DIM)
    acc = (out["logits"].argmax(1) == ref.y).float().mean().item()
    assert acc >= 0.97
    rec = json.loads(record_path(EMBEDDED_DIGITS_WEIGHTS).read_text())
    assert rec["sha256"] == sha and rec["accuracy"] >= 0.97 and rec["extractor_name"] == f"digits-cnn-{sha[:8]}"
    assert abs(rec["accuracy"] - acc) < 0.01


def test_spatial_features_are_nhwc():
    net, _ = load_digits_net()
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    grabbed = {}
    net.conv2.register_forward_hook(lambda m, i, o: grabbed.setdefault("c2", o))
    with torch.no_grad():
        sp = net(x)["spatial"]
        fmap = torch.nn.functional.max_pool2d(torch.relu(grabbed["c2"]), 2)  # [2, 64, 4, 4]
    for h, w, c in [(0, 0, 0), (1, 2, 3), (3, 3, 15), (2, 0, 9)]:
        assert sp[1, (h * 4 + w) * 16 + c] == fmap[1, c, h, w]


def test_training_is_deterministic_and_writes_record(tmp_path):
    r1 = train_digit_features(tmp_path / "a.pt", seed=3, epochs=1, min_accuracy=0.0, command="test")
    r2 = train_digit_features(tmp_path / "b.pt", seed=3, epochs=1, min_accuracy=0.0, command="test")
    assert r1["sha256"] == r2["sha256"] == sha256_file(tmp_path / "a.pt")
    rec = json.loads((tmp_path / "a.json").read_text())
    for key in ("seed", "epochs", "accuracy", "wall_time_s", "command", "environment"):
        assert key in rec
    with pytest.raises(L2CError, match="accuracy"):
        train_digit_features(tmp_path / "c.pt", seed=3, epochs=1, min_accuracy=1.01)
    assert not (tmp_path / "c.pt").exists()


# ---------------------------------------------------------------------------------------------
# torch-fidelity registration (offline)


class _U8(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x  # uint8 NHWC numpy

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]).permute(2, 0, 1).contiguous()


def test_torch_fidelity_with_digits_extractor_offline(tmp_path):
    import torch_fidelity
    from l2c.data import float_to_uint8, load_dataset
    name = register_digits_extractor()
    assert name == f"digits-cnn-{sha256_file(EMBEDDED_DIGITS_WEIGHTS)[:8]}"
    assert register_digits_extractor() == name  # idempotent
    fake = float_to_uint8(load_dataset("digits:train").x[:300])
    real = float_to_uint8(load_dataset("digits:reference").x)
    m = torch_fidelity.calculate_metrics(
        input1=_U8(fake), input2=_U8(real), isc=True, fid=True, kid=True, prc=True, cuda=False, batch_size=100,
        feature_extractor=name, feature_extractor_weights_path=str(EMBEDDED_DIGITS_WEIGHTS), isc_splits=1,
        kid_subsets=5, kid_subset_size=100, cache=False, save_cpu_ram=True, verbose=False)
    # same numbers from our maths on the same features
    net, _ = load_digits_net()
    with torch.no_grad():
        ff, fr = net(torch.from_numpy(fake)), net(torch.from_numpy(real))
    pf, pr_ = ff["pool"].numpy(), fr["pool"].numpy()
    fid = adm.frechet_distance(*adm.feature_statistics(pf), *adm.feature_statistics(pr_))
    assert m["frechet_inception_distance"] == pytest.approx(fid, rel=1e-4)
    assert m["inception_score_mean"] == pytest.approx(adm.inception_score(ff["logits_unbiased"].numpy()), rel=1e-5)
    p, r = adm.precision_recall(pr_, pf)
    assert (m["precision"], m["recall"]) == pytest.approx((p, r), abs=1 / 300)
    k = adm.kid(pf, pr_, subsets=5, subset_size=100)
    assert m["kernel_inception_distance_mean"] == pytest.approx(k["kid_mean"], rel=1e-3)
    # weights whose hash does not match the registered name are refused
    other = tmp_path / "other.pt"
    train_digit_features(other, seed=1, epochs=1, min_accuracy=0.0, command="test")
    with pytest.raises(L2CError, match="register these weights"):
        torch_fidelity.calculate_metrics(input1=_U8(fake), input2=_U8(real), fid=True, cuda=False, cache=False,
                                         feature_extractor=name, feature_extractor_weights_path=str(other),
                                         save_cpu_ram=True, verbose=False)


# ---------------------------------------------------------------------------------------------
# evaluate()


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    from l2c.data import digits_reference_npz, float_to_uint8, load_dataset
    d = tmp_path_factory.mktemp("digits")
    digits_reference_npz(d / "ref.npz")
    tr = load_dataset("digits:train")
    write_samples_npz(d / "train.npz", float_to_uint8(tr.x), tr.y.numpy())
    return d


@pytest.fixture(scope="module")
def ref_vs_ref(digits_files):
    from l2c.metrics.evaluate import evaluate
    ref = digits_files / "ref.npz"
    return evaluate(ref, ref, paired_with=ref)


def test_evaluate_reference_against_itself(ref_vs_ref, digits_files, tmp_path):
    from l2c.metrics.evaluate import write_evaluation
    r = ref_vs_ref
    assert r["backend"] == "digits" and r["feature_extractor"].startswith("digits-cnn-")
    assert r["weights_sha256"].startswith(r["feature_extractor"][-8:])
    assert r["n_samples"] == r["n_ref"] == 500
    assert abs(r["fid"]) < 1e-4 and abs(r["sfid"]) < 1e-4
    assert r["precision"] == 1.0 and r["recall"] == 1.0
    assert 8.0 < r["inception_score"] <= 10.0  # 10 balanced classes, confidently classified
    assert r["kid_subset_size"] == 500 and "environment" in r and "timing" in r
    # paired fidelity of identical files: MSE 0, PSNR inf (JSON null), per-sample PSNR capped at 100 dB
    pf = r["paired"]
    assert pf["mse_mean"] == 0.0 and pf["psnr_db"] == math.inf and pf["psnr_mean_db"] == 100.0
    assert pf["n_identical"] == 500
    out = tmp_path / "eval.json"
    write_evaluation(r, out)
    text = out.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["paired"]["psnr_db"] is None


def test_evaluate_train_split_has_positive_fid(digits_files):
    from l2c.metrics.evaluate import evaluate
    r = evaluate(digits_files / "train.npz", digits_files / "ref.npz", kid=False)
    assert r["fid"] > 0.1 and r["sfid"] > 0.1
    assert 0.5 < r["precision"] < 1.0 and 0.5 < r["recall"] < 1.0
    assert "kid_mean" not in r


def test_reference_feature_cache_gives_the_same_evaluation(digits_files, tmp_path):
    """The first evaluation through a feature cache extracts and caches the reference features, the
    second reads them: same numbers as without a cache. A damaged cache file or a changed reference
    is never used; the extractor is not even run over a cached reference."""
    from l2c.metrics import evaluate as E
    cache = tmp_path / "cache"
    samples, ref = digits_files / "train.npz", digits_files / "ref.npz"
    plain = E.evaluate(samples, ref, kid=False, cleanfid="frechet")
    first = E.evaluate(samples, ref, kid=False, cleanfid="frechet", feature_cache=cache)
    [cached] = list(cache.glob("reference-features-*.npz"))
    assert first["reference_features"].startswith("computed, cached as")
    calls = []
    real = E.extract_features
    E.extract_features = lambda batch, *a, **k: calls.append(batch.path) or real(batch, *a, **k)
    try:
        second = E.evaluate(samples, ref, kid=False, cleanfid="frechet", feature_cache=cache)
    finally:
        E.extract_features = real
    assert second["reference_features"] == f"cache {cached}" and calls == [samples]  # only the samples ran
    for k in ("fid", "sfid", "precision", "recall", "inception_score"):
        assert plain[k] == first[k] == second[k], k
    cached.write_bytes(b"damaged")
    third = E.evaluate(samples, ref, kid=False, cleanfid="frechet", feature_cache=cache)
    assert third["reference_features"].startswith("computed") and third["fid"] == plain["fid"]
    other = tmp_path / "ref2.npz"  # another reference (the train split): another key, another file
    other.write_bytes(samples.read_bytes())
    fourth = E.evaluate(ref, other, kid=False, cleanfid="frechet", feature_cache=cache)
    assert fourth["reference_features"].startswith("computed") and len(list(cache.glob("*.npz"))) == 2


def test_paired_fidelity_values_and_errors(digits_files, tmp_path):
    from l2c.metrics.evaluate import evaluate, paired_fidelity
    ref = open_npz(digits_files / "ref.npz")
    imgs, labels = ref.images(), ref.labels()
    noisy = imgs.copy()
    noisy[0, 0, 0, 0] ^= 0xFF  # one pixel of the first image changed
    noisy[1] = 255 - noisy[1]
    write_samples_npz(tmp_path / "noisy.npz", noisy, labels)
    pf = paired_fidelity(open_npz(tmp_path / "noisy.npz"), ref)
    d = (noisy.astype(np.float64) - imgs) / 255
    mse = (d ** 2).reshape(500, -1).mean(1)
    assert rel_close(pf["mse_mean"], mse.mean())
    assert rel_close(pf["psnr_db"], 10 * math.log10(1 / mse.mean()))
    per = np.where(mse > 0, 10 * np.log10(1 / np.where(mse > 0, mse, 1)), 100.0)
    assert rel_close(pf["psnr_mean_db"], np.minimum(per, 100).mean())
    assert pf["n_identical"] == 498
    write_samples_npz(tmp_path / "shuffled.npz", imgs, labels[::-1].copy())
    with pytest.raises(L2CError, match="labels"):
        paired_fidelity(open_npz(tmp_path / "shuffled.npz"), ref)
    write_samples_npz(tmp_path / "short.npz", imgs[:10], labels[:10])
    with pytest.raises(L2CError, match="shape"):
        paired_fidelity(open_npz(tmp_path / "short.npz"), ref)
    with pytest.raises(L2CError, match="0 images"):
        np.savez(tmp_path / "empty.npz", arr_0=np.zeros((0, 8, 8, 1), np.uint8))
        evaluate(tmp_path / "empty.npz", digits_files / "ref.npz")
    write_samples_npz(tmp_path / "big.npz", _imgs(h=16, w=16))
    with pytest.raises(L2CError, match="16x16"):
        evaluate(tmp_path / "big.npz", digits_files / "ref.npz")


# ---------------------------------------------------------------------------------------------
# ADM Inception extractor (random weights: shapes and layout only)


def test_adm_inception_shapes_and_nhwc_spatial():
    torch.manual_seed(0)
    ext = AdmInceptionExtractor("inception-v3-adm", ["2048", "spatial", "logits_unbiased"], random_weights=True)
    grabbed = {}
    ext.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: grabbed.setdefault("raw", o.clone()))
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        pool, spatial, logits = ext(x)
    assert pool.shape == (2, 2048) and spatial.shape == (2, 2023) and logits.shape == (2, 1008)
    raw = grabbed["raw"]
    assert raw.shape == (2, 192, 17, 17)
    for h, w, c in [(0, 0, 0), (0, 1, 0), (5, 11, 6), (16, 16, 3)]:
        assert spatial[1, (h * 17 + w) * 7 + c] == raw[1, c, h, w]
    torch.testing.assert_close(spatial, raw[:, :7].permute(0, 2, 3, 1).reshape(2, -1))
    assert ext.features_list == ["2048", "spatial", "logits_unbiased"]
    # spatial only: the forward stops after Mixed_6d (Mixed_7a never runs)
    ext.features_list = ["spatial"]
    ext.Mixed_7a.register_forward_hook(lambda m, i, o: grabbed.setdefault("7a", True))
    with torch.no_grad():
        (sp_only,) = ext(x)
    torch.testing.assert_close(sp_only, spatial)
    assert "7a" not in grabbed


def test_adm_inception_channels_last_gives_torch_fidelitys_features(tmp_path):
    """The extractor runs channels-last; torch-fidelity's own InceptionV3 (NCHW) with the same
    weights (the rehearsal's He-initialised stand-in, so the features have their real scale) gives
    the same features up to fp32 reassociation."""
    import io

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from l2c.rehearsal import standin_inception
    path = standin_inception(tmp_path / "weights-inception-2015-12-05-6726825d.pth")
    ours = AdmInceptionExtractor("inception-v3-adm", ["2048", "logits_unbiased"], feature_extractor_weights_path=path).eval()
    assert ours.Mixed_6d.branch1x1.conv.weight.is_contiguous(memory_format=torch.channels_last)
    buf = io.BytesIO()
    torch.save(torch.load(path, weights_only=True), buf)  # our own stand-in file, read without unpickling
    buf.seek(0)
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                         feature_extractor_weights_path=buf).eval()
    assert theirs.Mixed_6d.branch1x1.conv.weight.is_contiguous()
    x = torch.randint(0, 256, (3, 3, 48, 48), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x)):
            assert b.abs().mean() > 1e-3  # not vanishing features
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_adm_inception_weights_missing_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(L2CError) as e:
        resolve_inception_weights()
    msg = str(e.value)
    assert INCEPTION_WEIGHTS_FILE in msg and INCEPTION_WEIGHTS_URL in msg and str(tmp_path) in msg
    with pytest.raises(L2CError, match="not found"):
        resolve_inception_weights(tmp_path / "nope.pth")
    with pytest.raises(L2CError, match=INCEPTION_WEIGHTS_FILE):
        AdmInceptionExtractor("inception-v3-adm", ["spatial"])
