"""Reliability of loading, writing and resuming (issue 14 items 1, 4, 5) and the clean-fid
cross-check of every evaluation (issue 13 item 5).

- untrusted files: a pickle payload planted at every weights / data entry point never runs and is
  refused with an ``L2CError`` naming the file (the control test shows the payload is live);
- resumption verifies content: damaged shards and outputs are named and recomputed, validation
  errors leave nothing behind, concurrent runs into one output share the work;
- training logs restart at the checkpoint a run resumes from, torn lines tolerated;
- atomically written files honour the umask;
- FID is recomputed through clean-fid's API and a disagreement is an error."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny
from l2c.generate import SampleConfig, generate, shard_dir
from l2c.io import L2CError, atomic_path, save_torch, truncate_jsonl_log, write_json, write_npz
from l2c.metrics.npz import write_samples_npz


class Payload:
    """Unpickling this runs ``touch MARKER``: what a malicious weights file would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_torch(path: Path, marker: Path, wrap=lambda p: {"state_dict": {"w": p}}) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap(Payload(marker)), path)
    return path


def plant_npz(path: Path, marker: Path, key: str, **others) -> Path:
    np.savez(path, **{key: np.array([Payload(marker)], dtype=object)}, **others)
    return path


def tiny_images(path: Path, n: int = 4, size: int = 8, channels: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    write_samples_npz(path, rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8), np.arange(n) % 10)
    return path


def sample_cfg(ckpt, **kw) -> SampleConfig:
    base = dict(checkpoint=str(ckpt), nfe=2, cfg_scale=1.5, num_samples=6, shard_size=2, batch_size=2, seed=3)
    return SampleConfig(**{**base, **kw})


# ----------------------------------------------------------------------------------------------
# 1. no code execution from any weights or data file


def test_the_planted_payload_is_live(tmp_path):
    """Control: a plain unpickling of the planted files does run the payload (so the table below
    would fail if any entry point unpickled freely)."""
    marker = tmp_path / "PWNED"
    torch.load(plant_torch(tmp_path / "p.pt", marker), weights_only=False)
    assert marker.exists()
    marker.unlink()
    with np.load(plant_npz(tmp_path / "p.npz", marker, "latents"), allow_pickle=True) as f:
        f["latents"]
    assert marker.exists()


def _evaluate(tmp_path, **kw):
    from l2c.metrics.evaluate import evaluate
    s, r = tiny_images(tmp_path / "s.npz"), tiny_images(tmp_path / "r.npz", seed=1)
    return evaluate(s, r, **kw)


def _vae_folder_with_bin(tmp_path, marker):
    diffusers = pytest.importorskip("diffusers")
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                  layers_per_block=1, norm_num_groups=4, sample_size=8)
    vae.save_pretrained(tmp_path / "vae", safe_serialization=False)
    return plant_torch(tmp_path / "vae" / "diffusion_pytorch_model.bin", marker, wrap=lambda p: {"encoder.conv_in.weight": p})


def _router_cfg(ckpt, **kw):
    from l2c.router import RouterConfig
    base = dict(checkpoint=str(ckpt), nfe=4, steps=4, batch_size=4, lam=0.0, log_every=1, ckpt_every=2, threads=1)
    return RouterConfig(**{**base, **kw})


def _pretrain_cfg(**kw):
    from l2c.pretrain import PretrainConfig
    base = dict(model="DiT-Micro/2", model_kwargs={"input_size": 8, "in_channels": 1, "num_classes": 10},
                steps=4, batch_size=4, warmup_steps=1, ckpt_every=2, log_every=1, threads=1)
    return PretrainConfig(**{**base, **kw})


def _case_inception_flag(tmp_path, marker, monkeypatch):
    f = plant_torch(tmp_path / "weights-inception.pth", marker, wrap=lambda p: {"Conv2d_1a_3x3.conv.weight": p})
    return f, lambda: _evaluate(tmp_path, backend="inception-adm", weights=f)


def _case_inception_torch_home(tmp_path, marker, monkeypatch):
    from l2c.metrics.features import INCEPTION_WEIGHTS_FILE
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    f = plant_torch(tmp_path / "torch-home" / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE, marker,
                    wrap=lambda p: {"Conv2d_1a_3x3.conv.weight": p})
    return f, lambda: _evaluate(tmp_path, backend="inception-adm")


def _case_digits_features(tmp_path, marker, monkeypatch):
    f = plant_torch(tmp_path / "features.pt", marker, wrap=lambda p: {"format": "l2c-digits-features-v1", "state_dict": p})
    return f, lambda: _evaluate(tmp_path, backend="digits", weights=f)


def _case_model_checkpoint(tmp_path, marker, monkeypatch):
    f = plant_torch(tmp_path / "model.pt", marker, wrap=lambda p: {"format": "l2c-suite/model", "ema": p})
    return f, lambda: generate(sample_cfg(f), tmp_path / "s.npz", progress=False)


def _case_router_file(tmp_path, marker, monkeypatch):
    f = plant_torch(tmp_path / "router.pt", marker, wrap=lambda p: {"routers": {"0.prob": p}})
    ckpt = make_tiny(tmp_path / "tiny.pt")
    return f, lambda: generate(sample_cfg(ckpt, router=str(f), theta=0.5), tmp_path / "s.npz", progress=False)


def _case_router_for_macs(tmp_path, marker, monkeypatch):
    from l2c.router import load_router
    f = plant_torch(tmp_path / "router.pt", marker, wrap=lambda p: {"format": "l2c-suite/router", "beta": p})
    return f, lambda: load_router(f)


def _case_vae_folder_bin(tmp_path, marker, monkeypatch):
    from l2c.vae import load_vae
    f = _vae_folder_with_bin(tmp_path, marker)
    return f, lambda: load_vae(str(f.parent))


def _case_ldm_autoencoder(tmp_path, marker, monkeypatch):
    from l2c.vae import load_vae
    f = plant_torch(tmp_path / "autoencoder_kl_ema.pth", marker, wrap=lambda p: {"encoder.down.0.block.0.conv1.weight": p})
    return f, lambda: load_vae(str(f))


def _case_router_training_checkpoint(tmp_path, marker, monkeypatch):
    from l2c.router import train_router
    ckpt = make_tiny(tmp_path / "tiny.pt")
    f = plant_torch(tmp_path / "r" / "checkpoint.pt", marker, wrap=lambda p: {"format": "l2c-suite/router-state", "beta": p})
    return f, lambda: train_router(_router_cfg(ckpt), tmp_path / "r", progress=False)


def _case_pretrain_checkpoint(tmp_path, marker, monkeypatch):
    from l2c.pretrain import pretrain
    f = plant_torch(tmp_path / "p" / "checkpoint.pt", marker, wrap=lambda p: {"format": "l2c-suite/pretrain-state", "model": p})
    return f, lambda: pretrain(_pretrain_cfg(), tmp_path / "p", progress=False)


def _case_latents_npz(tmp_path, marker, monkeypatch):
    from l2c.data import load_dataset
    f = plant_npz(tmp_path / "latents.npz", marker, "latents", labels=np.zeros(1, np.int64))
    return f, lambda: load_dataset(f"latents:{f}")


def _case_samples_npz(tmp_path, marker, monkeypatch):
    from l2c.metrics.evaluate import evaluate
    f = plant_npz(tmp_path / "samples.npz", marker, "arr_0")
    return f, lambda: evaluate(f, tiny_images(tmp_path / "r.npz"))


def _case_reference_statistics(tmp_path, marker, monkeypatch):
    from l2c.metrics.evaluate import evaluate
    rng = np.random.default_rng(0)
    f = plant_npz(tmp_path / "VIRTUAL_imagenet256_labeled.npz", marker, "mu",
                  arr_0=rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), sigma=np.eye(3))
    return f, lambda: evaluate(tiny_images(tmp_path / "s.npz"), f, backend="inception-adm", weights=tmp_path / "absent.pth")


PAYLOAD_CASES = {
    "inception-weights-flag": _case_inception_flag,
    "inception-weights-torch-home": _case_inception_torch_home,
    "digits-feature-net": _case_digits_features,
    "model-checkpoint": _case_model_checkpoint,
    "router-file-for-sampling": _case_router_file,
    "router-file": _case_router_for_macs,
    "vae-diffusers-folder-bin": _case_vae_folder_bin,
    "ldm-autoencoder-file": _case_ldm_autoencoder,
    "router-training-checkpoint": _case_router_training_checkpoint,
    "pretraining-checkpoint": _case_pretrain_checkpoint,
    "latents-npz": _case_latents_npz,
    "samples-npz": _case_samples_npz,
    "adm-reference-batch-statistics": _case_reference_statistics,
}


@pytest.mark.parametrize("case", sorted(PAYLOAD_CASES))
def test_planted_payload_never_runs(case, tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    planted, call = PAYLOAD_CASES[case](tmp_path, marker, monkeypatch)
    with pytest.raises(L2CError) as ei:
        call()
    assert not marker.exists(), f"{case}: the payload ran"
    assert str(planted) in str(ei.value), f"{case}: the error does not name the file: {ei.value}"
    assert "refus" in str(ei.value) or "Python objects" in str(ei.value), str(ei.value)
    assert "\n" not in str(ei.value)


def test_cli_evaluate_refuses_a_payload_as_inception_weights(tmp_path, capsys):
    from l2c.cli import main
    marker = tmp_path / "PWNED"
    f = plant_torch(tmp_path / "inception.pth", marker, wrap=lambda p: {"fc.weight": p})
    s, r = tiny_images(tmp_path / "s.npz"), tiny_images(tmp_path / "r.npz", seed=1)
    rc = main(["evaluate", str(s), "--ref", str(r), "--backend", "inception-adm", "--weights", str(f),
               "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert rc == 2 and not marker.exists() and str(f) in err and "refused" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "e.json").exists()


def test_inception_weights_load_weights_only_into_torch_fidelity_module(tmp_path, monkeypatch):
    """A weights file in torch-fidelity's layout loads strictly, and every torch.load of a path is
    weights_only (torch-fidelity's own loader only sees an in-memory empty dict)."""
    from l2c.metrics.features import AdmInceptionExtractor
    sd = AdmInceptionExtractor("inception-v3-adm", ["2048"], random_weights=True).state_dict()
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(v.shape, generator=g) * 0.01 if v.is_floating_point() else v) for k, v in sd.items()}
    torch.save(sd, tmp_path / "inception.pth")
    calls, real = [], torch.load

    def spy(f, *a, **kw):
        calls.append((f, kw.get("weights_only")))
        return real(f, *a, **kw)
    monkeypatch.setattr(torch, "load", spy)
    ext = AdmInceptionExtractor("inception-v3-adm", ["2048"], feature_extractor_weights_path=str(tmp_path / "inception.pth"))
    assert calls and all(w is True for f, w in calls if isinstance(f, (str, os.PathLike)))
    got = ext.state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(L2CError, match=r"wrong\.pth: do not fit torch-fidelity's InceptionV3"):
        AdmInceptionExtractor("inception-v3-adm", ["2048"], feature_extractor_weights_path=str(tmp_path / "wrong.pth"))


# ----------------------------------------------------------------------------------------------
# 2. resumption verifies content


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """A tiny checkpoint and the bytes of its uninterrupted sample file."""
    d = tmp_path_factory.mktemp("sampled")
    ckpt = make_tiny(d / "tiny.pt")
    out = generate(sample_cfg(ckpt), d / "ref.npz", progress=False)
    return ckpt, out.read_bytes()


def _flip_middle(path: Path) -> None:
    """Corrupt data bytes in the middle of the file; the zip directory at the end stays intact."""
    b = bytearray(path.read_bytes())
    i = len(b) // 2
    b[i:i + 8] = bytes(x ^ 0xFF for x in b[i:i + 8])
    path.write_bytes(bytes(b))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_sidecar_hash(path: Path) -> None:
    meta = json.loads(path.with_suffix(".json").read_text())
    del meta["sha256"]
    path.with_suffix(".json").write_text(json.dumps(meta))


DAMAGE = {  # name -> (which file, how, what the log must say)
    "shard-data-corrupt-zip-intact": ("shard", _flip_middle, "is damaged"),
    "shard-truncated": ("shard", _truncate, "is damaged"),
    "shard-record-missing": ("shard-record", lambda p: p.unlink(), "has no readable record"),
    "output-truncated-sidecar-intact": ("output", _truncate, "damaged or truncated"),
    "output-data-corrupt": ("output", _flip_middle, "damaged or truncated"),
    "output-sidecar-without-hash": ("output", _drop_sidecar_hash, "has no sha256"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_pieces_are_named_and_recomputed(damage, sampled, tmp_path, caplog):
    ckpt, ref_bytes = sampled
    which, how, says = DAMAGE[damage]
    out = tmp_path / "s.npz"
    generate(sample_cfg(ckpt), out, progress=False, keep_shards=which != "output")
    target = {"shard": shard_dir(out) / "shard-00001.npz", "shard-record": shard_dir(out) / "shard-00001.json",
              "output": out}[which]
    if which != "output":
        out.unlink()  # as after a kill before the merge
    how(target)
    with caplog.at_level(logging.WARNING):
        assert generate(sample_cfg(ckpt), out, progress=False) == out
    named = str(target if which != "shard-record" else target.with_suffix(".npz"))
    assert any(says in r.getMessage() and named in r.getMessage() for r in caplog.records), caplog.text
    assert out.read_bytes() == ref_bytes
    meta = json.loads(out.with_suffix(".json").read_text())
    import hashlib
    assert meta["sha256"] == hashlib.sha256(ref_bytes).hexdigest()


def test_complete_output_is_verified_not_recomputed(sampled, tmp_path, caplog):
    ckpt, ref_bytes = sampled
    out = generate(sample_cfg(ckpt), tmp_path / "s.npz", progress=False)
    stamp = out.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="l2c.generate"):
        generate(sample_cfg(ckpt), out, progress=False)
    assert out.stat().st_mtime_ns == stamp and "sha256 verified" in caplog.text


def test_validation_error_leaves_nothing_that_blocks_the_corrected_command(sampled, tmp_path):
    from l2c.cache import CacheSchedule
    ckpt, ref_bytes = sampled
    CacheSchedule.full(5, 4).save(tmp_path / "wrong-nfe.json")
    out = tmp_path / "s.npz"
    with pytest.raises(L2CError, match="NFE"):
        generate(sample_cfg(ckpt, schedule=str(tmp_path / "wrong-nfe.json")), out, progress=False)
    assert not shard_dir(out).exists() and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wrong-nfe.json"]  # no lock file either
    # a shards folder left with only a config.json (an older version, or a run killed before its
    # first shard) binds nothing either
    shard_dir(out).mkdir()
    write_json(shard_dir(out) / "config.json", {**asdict(sample_cfg(ckpt)), "nfe": 9})
    assert generate(sample_cfg(ckpt), out, progress=False) == out and out.read_bytes() == ref_bytes


def test_two_identical_runs_share_the_work(sampled, tmp_path, monkeypatch):
    """Two concurrent identical runs into one output (threads: flock conflicts between separate
    opens, as between processes): both succeed, every shard is computed exactly once, the file is
    byte-identical to an uninterrupted run's."""
    import l2c.generate as gen_mod
    ckpt, ref_bytes = sampled
    writes, real = [], gen_mod.write_npz

    def slow_write(path, **arrays):
        writes.append(Path(path).name)
        time.sleep(0.2)  # long enough for the runs to overlap
        return real(path, **arrays)
    monkeypatch.setattr(gen_mod, "write_npz", slow_write)
    out, results, errors = tmp_path / "s.npz", [], []

    def run():
        try:
            results.append(generate(sample_cfg(ckpt), out, progress=False))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and results == [out, out]
    shard_writes = [w for w in writes if w.startswith("shard-")]
    assert sorted(shard_writes) == [f"shard-{s:05d}.npz" for s in range(3)]  # no shard twice
    assert writes.count("s.npz") == 1 and out.read_bytes() == ref_bytes
    assert not shard_dir(out).exists() and not (tmp_path / "s.npz.lock").exists()


def test_a_shard_claimed_by_another_process_is_waited_for_then_recomputed(sampled, tmp_path, caplog):
    """Another process holds the claim of shard 0 and dies without writing it: this run computes the
    other shards, waits for the claim, then computes shard 0 itself."""
    ckpt, ref_bytes = sampled
    out = tmp_path / "s.npz"
    shard_dir(out).mkdir()
    lock = shard_dir(out) / "shard-00000.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, b'pid %d on test' % os.getpid())\n"
        "print('held', flush=True)\n"
        "deadline = time.time() + 120\n"  # hold until this run has done the other shards and waits
        f"while not os.path.exists({str(shard_dir(out) / 'shard-00002.json')!r}) and time.time() < deadline:\n"
        "    time.sleep(0.05)\n"
        "time.sleep(1.0)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with caplog.at_level(logging.WARNING):
            assert generate(sample_cfg(ckpt), out, progress=False) == out
    finally:
        holder.wait(timeout=30)
    assert out.read_bytes() == ref_bytes
    assert "locked by another run (pid" in caplog.text


def test_locked_reports_a_busy_lock_without_waiting(tmp_path):
    from l2c.io import locked
    p = tmp_path / "out.lock"
    with locked(p) as a:
        assert a and p.exists()
        with locked(p, blocking=False) as b:
            assert b is False
    assert not p.exists()


# ----------------------------------------------------------------------------------------------
# training logs: truncated to the checkpoint resumed from, torn lines tolerated


def test_truncate_jsonl_log_tolerates_torn_and_garbage_lines(tmp_path, caplog):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\nnot json\n{"step": 3}\n{"step": 4, "lo')
    with caplog.at_level(logging.WARNING):
        truncate_jsonl_log(log, 3)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n{"step": 3}\n'
    assert "line 3, 5" in caplog.text and str(log) in caplog.text
    truncate_jsonl_log(log, 0)
    assert log.read_text() == ""
    truncate_jsonl_log(tmp_path / "absent.jsonl", 5)
    assert not (tmp_path / "absent.jsonl").exists()


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after the raise point runs."""


def _kill_at_checkpoint(monkeypatch, module, nth: int, torn: str | None = None, log_path: Path | None = None):
    """Make ``module.save_torch`` die at its ``nth`` call (1 = the first checkpoint), optionally after
    appending a torn line to the log (a kill in the middle of a write)."""
    real, calls = module.save_torch, []

    def dying(obj, path):
        calls.append(path)
        if len(calls) == nth:
            if torn is not None:
                with open(log_path, "a") as f:
                    f.write(torn)
            raise _Killed
        return real(obj, path)
    monkeypatch.setattr(module, "save_torch", dying)


def _steps(log: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in log.read_text().splitlines()]


def _check_killed_log(log: Path, nth: int) -> None:
    """What the kill left: lines 1-2 and no checkpoint (killed at the first checkpoint), or lines 1-4
    after the step-2 checkpoint plus a torn line (killed at the second)."""
    lines = log.read_text().splitlines()
    if nth == 1:
        assert _steps(log) == [1, 2]
    else:
        assert [json.loads(ln)["step"] for ln in lines[:-1]] == [1, 2, 3, 4] and lines[-1] == '{"step": 5, "lo'


@pytest.mark.parametrize("kill", ["before-first-checkpoint", "after-a-checkpoint-torn-line"])
def test_router_training_log_has_no_duplicates_after_a_kill(kill, tmp_path, monkeypatch):
    import l2c.router as router_mod
    from l2c.router import train_router
    ckpt = make_tiny(tmp_path / "tiny.pt")
    out, log = tmp_path / "r", tmp_path / "r" / "train_log.jsonl"
    nth = 1 if kill == "before-first-checkpoint" else 2  # checkpoints at steps 2 and 4
    with monkeypatch.context() as m:
        _kill_at_checkpoint(m, router_mod, nth, torn=None if nth == 1 else '{"step": 5, "lo', log_path=log)
        with pytest.raises(_Killed):
            train_router(_router_cfg(ckpt), out, progress=False)
    _check_killed_log(log, nth)
    assert (out / "checkpoint.pt").exists() == (nth == 2)
    train_router(_router_cfg(ckpt), out, progress=False)
    assert _steps(log) == [1, 2, 3, 4]


@pytest.mark.parametrize("kill", ["before-first-checkpoint", "after-a-checkpoint-torn-line"])
def test_pretrain_log_has_no_duplicates_after_a_kill(kill, tmp_path, monkeypatch):
    import l2c.pretrain as pretrain_mod
    from l2c.pretrain import pretrain
    out, log = tmp_path / "p", tmp_path / "p" / "train_log.jsonl"
    nth = 1 if kill == "before-first-checkpoint" else 2
    with monkeypatch.context() as m:
        _kill_at_checkpoint(m, pretrain_mod, nth, torn=None if nth == 1 else '{"step": 5, "lo', log_path=log)
        with pytest.raises(_Killed):
            pretrain(_pretrain_cfg(), out, progress=False)
    _check_killed_log(log, nth)
    assert (out / "checkpoint.pt").exists() == (nth == 2)
    pretrain(_pretrain_cfg(), out, progress=False)
    assert _steps(log) == [1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------
# 3. outputs readable by the group under the user's umask


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_outputs_honour_the_umask(umask, tmp_path, sampled):
    ckpt, _ = sampled
    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        write_npz(tmp_path / "a.npz", x=np.zeros(3))
        save_torch({"x": torch.zeros(1)}, tmp_path / "a.pt")
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
        out = generate(sample_cfg(ckpt, num_samples=2), tmp_path / "s.npz", progress=False)
    finally:
        os.umask(old)
    for p in ("a.json", "a.npz", "a.pt", "a.txt", out.name, out.with_suffix(".json").name):
        assert (tmp_path / p).stat().st_mode & 0o777 == 0o666 & ~umask, p


# ----------------------------------------------------------------------------------------------
# 4. the clean-fid cross-check


def test_cleanfid_cross_check_agrees_and_never_downloads(tmp_path, monkeypatch):
    """Digits back-end: clean-fid's FID (its Fréchet distance on our statistics, and its feature
    loop with the digits network) is recorded beside ours and agrees; clean-fid never builds its
    own network or fetches anything (those paths raise here)."""
    import cleanfid.features
    import cleanfid.fid

    def no(*a, **k):
        raise AssertionError("clean-fid tried to build its own network or download")
    for mod, name in ((cleanfid.fid, "build_feature_extractor"), (cleanfid.features, "feature_extractor"),
                      (cleanfid.features, "check_download_url"), (cleanfid.fid, "get_reference_statistics"),
                      (torch.hub, "download_url_to_file")):
        monkeypatch.setattr(mod, name, no)
    from l2c.data import digits_reference_npz
    from l2c.metrics.evaluate import evaluate
    digits_reference_npz(tmp_path / "ref.npz")
    with np.load(tmp_path / "ref.npz") as f:
        x, y = f["arr_0"], f["arr_1"]
    rng = np.random.default_rng(0)
    noisy = np.clip(x[:200].astype(int) + rng.integers(-40, 41, x[:200].shape), 0, 255).astype(np.uint8)
    write_samples_npz(tmp_path / "s.npz", noisy, y[:200])
    r = evaluate(tmp_path / "s.npz", tmp_path / "ref.npz", kid=False)
    c = r["cleanfid"]
    assert r["fid"] > 1.0
    assert r["fid_cleanfid"] == c["fid_features"] == pytest.approx(r["fid"], rel=1e-5)
    assert c["max_relative_difference"] < 1e-5 and c["cleanfid_version"] and "cleanfid_s" in r["timing"]
    quick = evaluate(tmp_path / "s.npz", tmp_path / "ref.npz", kid=False, cleanfid="frechet")
    assert "fid_features" not in quick["cleanfid"] and quick["fid_cleanfid"] == quick["cleanfid"]["fid_frechet"]
    assert quick["fid_cleanfid"] == pytest.approx(r["fid"], rel=1e-9)
    with pytest.raises(L2CError, match="clean-fid cross-check 'none': expected one of full, frechet"):
        evaluate(tmp_path / "s.npz", tmp_path / "ref.npz", cleanfid="none")
    from l2c.cli import main
    assert main(["evaluate", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "ref.npz"), "--no-kid",
                 "--cleanfid", "frechet", "--out", str(tmp_path / "e.json")]) == 0
    cli = json.loads((tmp_path / "e.json").read_text())
    assert cli["fid_cleanfid"] == cli["cleanfid"]["fid_frechet"] and "fid_features" not in cli["cleanfid"]


def test_cleanfid_disagreement_is_an_error_naming_both_numbers(tmp_path, monkeypatch):
    import l2c.metrics.crosscheck as cc
    real = cc._FeatureModel.__call__
    monkeypatch.setattr(cc._FeatureModel, "__call__", lambda self, x: real(self, x) * 1.05)  # a drifting feature path
    with pytest.raises(L2CError, match=r"clean-fid cross-check failed .*our FID [0-9.e+-]+ but clean-fid .* gives "
                                       r"[0-9.e+-]+ \(relative difference"):
        _evaluate(tmp_path, backend="digits", kid=False)
    from l2c.metrics.crosscheck import check_agreement
    traces = 6.0  # tr S1 + tr S2
    assert check_agreement(10.0, {"fid_frechet": 10.005}, traces) == pytest.approx(0.005 / 10.005, rel=1e-9)
    with pytest.raises(L2CError, match="our FID 10 but clean-fid .* gives 10.02"):
        check_agreement(10.0, {"fid_frechet": 10.02}, traces)
    check_agreement(1e-9, {"fid_frechet": -1e-9}, traces)  # a set against itself: round-off, not a disagreement


def test_missing_cleanfid_is_a_one_line_error(monkeypatch):
    from l2c.metrics.crosscheck import _cleanfid_frechet
    monkeypatch.setitem(sys.modules, "cleanfid", None)
    with pytest.raises(L2CError, match=r"the FID cross-check needs clean-fid.*pip install -e \."):
        _cleanfid_frechet(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))


def test_cleanfid_cross_check_with_inception_weights_file(tmp_path):
    """The inception-adm network (a weights file in torch-fidelity's layout, random values) as
    clean-fid's custom feature extractor: clean-fid's loop and Fréchet distance give our FID against
    reference statistics, at the 2048-d pool features with 4 samples (N <= D: our N x N eigenvalue
    form against clean-fid's sqrtm on the joint support), and at the 64-d tap with N > D (ADM's
    sqrtm against clean-fid's sqrtm)."""
    from l2c.metrics import adm
    from l2c.metrics.crosscheck import check_agreement, cleanfid_fid
    from l2c.metrics.evaluate import extract_features, fid_of
    from l2c.metrics.features import AdmInceptionExtractor
    from l2c.metrics.npz import open_npz
    torch.manual_seed(0)
    torch.save(AdmInceptionExtractor("inception-v3-adm", ["2048"], random_weights=True).state_dict(), tmp_path / "w.pth")
    ext = AdmInceptionExtractor("inception-v3-adm", ["64", "2048"], feature_extractor_weights_path=str(tmp_path / "w.pth"))
    for layer, n in (("2048", 4), ("64", 70)):
        s = open_npz(tiny_images(tmp_path / f"s{n}.npz", n=n, size=16), "samples")
        r = open_npz(tiny_images(tmp_path / f"r{n}.npz", n=3 if n < 64 else 80, size=16, seed=1), "reference")
        fs = extract_features(s, ext, {"pool": layer}, 16)["pool"]
        ref_stats = adm.feature_statistics(extract_features(r, ext, {"pool": layer}, 16)["pool"])
        ours = fid_of(fs, ref_stats)
        check = cleanfid_fid(s, ext, layer, fs, ref_stats, batch_size=16)
        assert ("support" in check) == (n <= fs.shape[1])
        assert ours > 0 and check["fid_features"] == pytest.approx(ours, rel=1e-4)
        traces = np.trace(adm.feature_statistics(fs)[1]) + np.trace(ref_stats[1])
        assert check_agreement(ours, check, traces) < 1e-4


@pytest.mark.parametrize("command", ["train-router", "pretrain"])
def test_a_second_training_run_into_one_folder_is_refused(command, tmp_path):
    """Training cannot be shared: while one run holds ``OUT.lock`` a second is refused at once, naming
    the holder; after it, the folder is free again."""
    from l2c.io import lock_path, locked
    from l2c.pretrain import pretrain
    from l2c.router import train_router
    out = tmp_path / "run"
    run = ((lambda: train_router(_router_cfg(make_tiny(tmp_path / "tiny.pt")), out, progress=False))
           if command == "train-router" else (lambda: pretrain(_pretrain_cfg(), out, progress=False)))
    with locked(lock_path(out)):
        with pytest.raises(L2CError, match=rf"{out} is being written by another run \(pid {os.getpid()} on .*wait for it"):
            run()
    assert not (out / "train_log.jsonl").exists()
    run()
    assert _steps(out / "train_log.jsonl") == [1, 2, 3, 4] and not lock_path(out).exists()


def test_encode_latents_recomputes_a_damaged_output_or_shard(tmp_path, monkeypatch, caplog):
    diffusers = pytest.importorskip("diffusers")
    import l2c.vae as vae_mod
    from l2c.vae import encode_latents
    torch.manual_seed(0)
    diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            layers_per_block=1, norm_num_groups=4, sample_size=8).save_pretrained(tmp_path / "vae")
    args = dict(data="random:3x8x8:2:6", vae=str(tmp_path / "vae"), image_size=8, batch_size=2, shard_size=2,
                progress=False)
    out = encode_latents(out=tmp_path / "z.npz", **args)
    ref = out.read_bytes()
    _truncate(out)  # beside an intact record
    with caplog.at_level(logging.WARNING):
        encode_latents(out=out, **args)
    assert "damaged or truncated" in caplog.text and out.read_bytes() == ref
    # killed at the merge: the shards stay; one is then damaged inside its data
    out.unlink()
    real = vae_mod.write_npz

    def no_merge(path, **arrays):
        if Path(path) == out:
            raise _Killed
        return real(path, **arrays)
    with monkeypatch.context() as m:
        m.setattr(vae_mod, "write_npz", no_merge)
        with pytest.raises(_Killed):
            encode_latents(out=out, **args)
    shard = tmp_path / "z.npz.shards" / "000000002.npz"
    _flip_middle(shard)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        encode_latents(out=out, **args)
    assert f"latent shard {shard} is damaged" in caplog.text and out.read_bytes() == ref


def test_a_file_system_without_locks_degrades_to_a_warning(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    from l2c.io import locked

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING), locked(tmp_path / "out.lock") as held:
        assert held
    assert "does not support file locks" in caplog.text and not (tmp_path / "out.lock").exists()


def test_encode_latents_waits_for_a_run_holding_its_output(tmp_path, caplog):
    diffusers = pytest.importorskip("diffusers")
    from l2c.io import lock_path, locked
    from l2c.vae import encode_latents
    torch.manual_seed(0)
    diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            layers_per_block=1, norm_num_groups=4, sample_size=8).save_pretrained(tmp_path / "vae")
    out, held, release = tmp_path / "z.npz", threading.Event(), threading.Event()

    def other_run():
        with locked(lock_path(out)):
            held.set()
            release.wait(30)
    class ReleaseWhenWaiting(logging.Handler):  # the other run finishes once this one is waiting for it
        def emit(self, record):
            if "locked by another run" in record.getMessage():
                release.set()
    handler = ReleaseWhenWaiting()
    logging.getLogger("l2c.io").addHandler(handler)
    t = threading.Thread(target=other_run)
    t.start()
    held.wait(30)
    try:
        with caplog.at_level(logging.WARNING):
            encode_latents("random:3x8x8:2:4", out, str(tmp_path / "vae"), image_size=8, progress=False)
    finally:
        release.set()
        logging.getLogger("l2c.io").removeHandler(handler)
        t.join(30)
    assert f"latents output {lock_path(out)} is locked by another run" in caplog.text and out.exists()


def test_a_corrupt_image_in_a_folder_is_named(tmp_path):
    from PIL import Image

    from l2c.data import load_dataset
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "a" / "ok.png")
    (tmp_path / "imgs" / "a" / "torn.png").write_bytes((tmp_path / "imgs" / "a" / "ok.png").read_bytes()[:30])
    ds = load_dataset(f"folder:{tmp_path / 'imgs'}", image_size=8)
    assert ds[0][0].shape == (3, 8, 8)
    with pytest.raises(L2CError, match=r"image .*torn\.png: cannot be decoded"):
        ds.batch(torch.arange(2))


def test_router_record_reads_the_last_whole_log_line():
    """The router cell's record takes the last log line that parses: a torn final line is skipped."""
    from l2c.cells import _last_record
    assert _last_record(['{"step": 1}', '{"step": 2}', '{"st']) == {"step": 2}
    assert _last_record([]) is None and _last_record(["{torn"]) is None
