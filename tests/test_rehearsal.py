"""The rehearsal of the paper's grid (config/rehearsal.yaml): no drift from config/paper.yaml, the
stand-in inputs in the official layouts (l2c/rehearsal.py), the planned DAG (local and SLURM), DDIM
on the U-ViT SD schedule, and the whole rehearsal run end to end (670 jobs, then the report).

Measured on 2 cores in a full `python -m pytest -q` (528 s) at revision 1b02cc0 (757 jobs then: one
latency job per cell): the whole run 311 s (test_rehearsal_end_to_end); the other tests of this file seconds each, the slowest the dry run of
the whole DAG (6.6 s)."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from analysis.tables import tables_for
from l2c import cells, rehearsal

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
PAPER = REPO / "config" / "paper.yaml"
REHEARSAL = REPO / "config" / "rehearsal.yaml"
ROUTERS = REPO.parent / "shared" / "reference" / "official-routers"
NEEDS_ROUTERS = pytest.mark.skipif(not ROUTERS.is_dir(), reason=f"the authors' router files are not here ({ROUTERS}); "
                                   "they are reference data outside the project")
GPU_RULES = {"profile", "train_router", "sample_part", "evaluate", "latency", "calibrate"}  # "sample" too when sample_jobs is 1


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def resolved(path: Path) -> dict:
    return cells.resolve(load(path))


def smk(workdir: Path, *args: str, configfile: Path = REHEARSAL, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = ["snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), "--configfile", str(configfile), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def planned_jobs(out: str) -> list[tuple[str, dict]]:
    """(rule, resources) of every job a dry run prints."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\n]*\]\n(?:local)?rule )", out):
        m = re.search(r"^(local)?rule (\S+):", block, re.M)
        if not m:
            continue
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        kv = dict(p.split("=", 1) for p in res.group(1).split(", ")) if res else {}
        jobs.append((("local:" if m.group(1) else "") + m.group(2), kv))
    return jobs


# -- no drift -----------------------------------------------------------------------------------------

def grid_signature(cfg: dict) -> dict:
    """Everything the rehearsal must share with the paper: rows, architectures, samplers, back-ends,
    guidance, NFEs, lambdas / thetas / families per NFE, seeds, cells, tables and the file kinds."""
    sig = {"random_seeds": cfg["random_seeds"], "grid_methods": cfg["figures"]["grid_methods"], "models": {}}
    for name, m in cfg["models"].items():
        kind, _, data = m["data"].partition(":")
        row = {k: m[k] for k in ("paper", "model", "sampler", "backend", "cfg_scale", "cfg_channels")}
        row["router"] = {k: m["router"][k] for k in ("clamp", "reduction", "stack_students", "compile")}
        row["files"] = {"checkpoint": Path(m["checkpoint"]).name, "vae": Path(m["vae"]).name, "data": (kind, Path(data).name),
                        "reference": Path(m["reference"]).name}
        row["nfe"] = {}
        for nfe, s in m["nfe"].items():
            keys = ("lambdas", "lambda", "theta", "thetas", "fewer_lambdas", "heuristics", "heuristic_lambdas", "drop",
                    "cache_all", "trajectory_lambdas", "trajectory_theta", "methods")
            row["nfe"][nfe] = {k: s[k] for k in keys}
            row["nfe"][nfe]["official_router"] = Path(s["official_router"]).name if s["official_router"] else None
            row["nfe"][nfe]["trajectory_loss"] = s["trajectory_router"].get("trajectory_loss")
            row["nfe"][nfe]["trajectory_paths"] = {k: s["trajectory_router"][k] for k in ("stack_students", "compile")}
        sig["models"][name] = row
    planned = cells.plan(cfg)
    sig["cells"] = [(c.model, c.nfe, c.method, c.family) for c in planned]
    sig["tables"] = tables_for([c.to_dict() | {"sampler": cfg["models"][c.model]["sampler"]} for c in planned])
    return sig


def test_rehearsal_follows_the_paper_grid():
    """A change to config/paper.yaml's grid that config/rehearsal.yaml does not follow fails here."""
    paper, reh = grid_signature(resolved(PAPER)), grid_signature(resolved(REHEARSAL))
    assert reh["models"].keys() == paper["models"].keys()
    for name in paper["models"]:
        assert reh["models"][name] == paper["models"][name], name
    assert reh == paper
    assert len(reh["cells"]) == 95 and {f for *_, f in reh["cells"]} == {
        "full", "l2c", "fewer", "bottom", "top", "random", "metrics", "interval", "deepcache", "faster-diffusion", "drop",
        "random-drop", "cache-all", "cache-all-unshifted", "official", "trajectory", "method"}
    # only sizes differ, and the rehearsal exercises the fan-out
    r = load(REHEARSAL)
    assert r["sample_jobs"] == 2 and r["sampling"]["num_samples"] <= 16 and r["router"]["steps"] <= 4


def test_drift_is_caught(tmp_path):
    cfg = load(REHEARSAL)
    cfg["models"]["dit-xl2-256"]["nfe"][20]["thetas"] = [0.1, 0.5]
    assert grid_signature(cells.resolve(cfg)) != grid_signature(resolved(PAPER))


def test_paper_data_hints_match_their_rows():
    """Each row's data source hint encodes at that row's image size into that row's data file."""
    cfg = load(PAPER)
    for name, m in cfg["models"].items():
        hint = m["sources"]["data"]
        size = 8 * m["model_kwargs"]["input_size"]
        assert m["data"].split(":", 1)[1] in hint, name
        assert ("--image-size" not in hint and size == 256) or f"--image-size {size}" in hint, (name, hint)


# -- the planned DAG ------------------------------------------------------------------------------------

def outputs_of(out: str, prefix: str) -> set[str]:
    files = [f.strip() for line in re.findall(r"^\s+output: (.*)$", out, re.M) for f in line.split(",")]
    return {f[len(prefix):] for f in files if f.startswith(prefix) and ("/tables/" in f or "/figures/" in f)}


def test_rehearsal_dry_run_plans_the_paper_dag_and_its_standins(tmp_path):
    """Every rule of the paper's DAG plus the stand-in rules; the same table and figure targets."""
    r = smk(tmp_path, "-n", "--cores", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    counts = {}
    for rule, _ in planned_jobs(out):
        counts[rule.removeprefix("local:")] = counts.get(rule.removeprefix("local:"), 0) + 1
    assert counts["sample_part"] == 2 * 95 and counts["merge_samples"] == counts["evaluate"] == 95
    assert counts["latency"] == 8  # one per (model, NFE)
    assert "sample" not in counts  # fanned out: the per-cell job only merges
    # every shard job reads its row's autoencoder (all rehearsal rows are latent), so none can start before
    # the stand-in autoencoder exists
    shard_blocks = [b for b in re.split(r"\n(?=\[[^\n]*\]\n(?:local)?rule )", out) if re.search(r"^rule sample_part:", b, re.M)]
    assert len(shard_blocks) == 2 * 95
    for b in shard_blocks:
        assert re.search(r"^\s+input: .*(sd-vae-ft-ema|autoencoder_kl_ema\.pth)", b, re.M), b[:400]
    assert counts["train_router"] == 18 and counts["profile"] == 8 and counts["table"] == 11 and counts["calibrate"] == 4
    assert counts["rehearsal_checkpoint"] == 4 and counts["encode_latents"] == 3 and counts["rehearsal_reference"] == 2
    for rule in ("rehearsal_vae_folder", "rehearsal_vae_file", "rehearsal_images", "rehearsal_inception"):
        assert counts[rule] == 1, rule
    assert re.search(r"l2c evaluate \S+ --ref work/rehearsal/inputs/refs/VIRTUAL_imagenet512.npz --backend inception-adm "
                     r".*--weights work/rehearsal/inputs/weights-inception-2015-12-05-6726825d.pth", out)
    p = smk(tmp_path, "-n", "--cores", "2", "--config", "check_files=false", configfile=PAPER)
    assert p.returncode == 0, p.stderr[-3000:]
    assert outputs_of(out, "results/rehearsal/") == outputs_of(p.stdout + p.stderr, "results/paper/") != set()


def test_slurm_profile_puts_gpu_rules_on_the_gpu_partition(tmp_path):
    """`snakemake --profile profiles/slurm --configfile config/rehearsal.yaml -n`: every job planned,
    the GPU rules with slurm_partition=gpu and gpu=1, the rest on the CPU partition or the submit host."""
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")
    r = smk(tmp_path, "--profile", str(REPO / "profiles" / "slurm"), "-n")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs = planned_jobs(r.stdout + r.stderr)
    assert len(jobs) == 670  # 95 cells x 6 jobs (2-job fan-out), 8 latency, 8 profile, routers, calibrations, tables, figures
    seen = set()
    for rule, res in jobs:
        seen.add(rule)
        if rule.startswith("local:"):
            assert rule[6:] in {"all", "cell", "collect", "table", "fig3_redundancy", "fig4_matched", "fig5_router",
                                "fig6_theta", "fig7_samples", "fig8_speedup", "fig9_methods"}, rule
        elif rule in GPU_RULES:
            assert res["slurm_partition"] == "gpu" and res["gpu"] == "1", (rule, res)
            assert int(res["mem_mb"]) >= 32000 and int(res["runtime"]) >= 60, (rule, res)
        else:
            assert res["slurm_partition"] == "cpu" and res.get("gpu", "0") == "0", (rule, res)
    assert GPU_RULES | {"merge_samples"} <= seen  # the merge of a fanned-out cell stays on the CPU partition


def test_inception_weights_is_an_external_file_with_its_source():
    cfg = load(PAPER)
    cfg["inception_weights"] = "models/weights-inception-2015-12-05-6726825d.pth"
    missing = cells.missing_files(cells.resolve(cfg))
    hit = [m for m in missing if m[0] == "inception_weights"]
    assert hit and hit[0][1] == cfg["inception_weights"] and "torch-fidelity" in hit[0][2]
    assert "inception_weights" not in {m[0] for m in cells.missing_files(resolved(PAPER))}  # default: $TORCH_HOME


@pytest.mark.parametrize("edit, named", [
    (lambda c: c["rehearsal"].pop("images_dir"), "rehearsal.images_dir"),
    (lambda c: c.pop("inception_weights"), "inception_weights"),
    (lambda c: c["models"]["uvit-h2-256"].update(data="folder:ImageNet/train"), "models.uvit-h2-256.data"),
])
def test_rehearsal_config_errors_name_the_key(edit, named):
    cfg = load(REHEARSAL)
    edit(cfg)
    with pytest.raises(cells.ConfigError, match=re.escape(named)):
        rehearsal.standin_plan(cells.resolve(cfg))


def test_rehearsal_standins_are_disjoint_from_the_paper_files():
    """The stand-ins live under the work folder, never where config/paper.yaml expects real files."""
    paths = rehearsal.standin_paths(resolved(REHEARSAL))
    assert len(paths) == 13 and all(p.startswith("work/rehearsal/inputs/") for p in paths)  # 4 + 2 + 1 + 3 + 2 + 1
    assert not paths & {f[1] for f in cells.external_files(resolved(PAPER))}


# -- stand-in inputs ------------------------------------------------------------------------------------

@NEEDS_ROUTERS
@pytest.mark.parametrize("row, router, theta, sampler, nfe, paper_ratio", [
    ("dit-xl2-256", "DDIM20_router.pt", 0.1, "ddim", 20, 0.4429),
    ("uvit-h2-256", "dpm20_router.pth", 0.9, "dpm2", 20, 0.6379),
])
def test_standin_checkpoints_take_the_official_routers(tmp_path, row, router, theta, sampler, nfe, paper_ratio):
    """The stand-in checkpoint is a plain state dict with the official key set (the full-width model's),
    narrower; the authors' router file applies to it unchanged (Table 4's remove ratio)."""
    from l2c.models import cacheable_blocks, create_model, load_model
    from l2c.router import load_schedule_from_router
    cfg = resolved(REHEARSAL)
    m = cfg["models"][row]
    path = tmp_path / Path(m["checkpoint"]).name
    rehearsal.standin_checkpoint(m["model"], m["model_kwargs"], path)
    sd = torch.load(path, weights_only=True)
    with torch.device("meta"):
        official = create_model(m["model"], input_size=m["model_kwargs"]["input_size"]).state_dict()
    assert set(sd) == set(official) and all(isinstance(v, torch.Tensor) for v in sd.values())
    model = load_model(path, m["model"], **m["model_kwargs"])
    assert len(cacheable_blocks(model)) == {"DiT-XL/2": 28, "U-ViT-H/2": 29}[m["model"]]
    sched = load_schedule_from_router(ROUTERS / router, theta, sampler=sampler, nfe=nfe)
    sched.check_model(model)
    assert sched.remove_ratio()["remove_ratio"] == pytest.approx(paper_ratio, abs=1e-4)


def test_standin_autoencoders_and_encoded_latents(tmp_path):
    """Both autoencoder layouts load through l2c.vae (the LDM file via diffusers' converter, strictly);
    `l2c encode-latents` turns the stand-in image folders into router-training latents."""
    pytest.importorskip("diffusers")
    from l2c.cli import main
    from l2c.data import load_dataset
    from l2c.vae import load_vae
    rehearsal.standin_ldm_vae(tmp_path / "autoencoder_kl_ema.pth")
    rehearsal.standin_sd_vae(tmp_path / "sd-vae-ft-ema")
    assert sorted(p.name for p in (tmp_path / "sd-vae-ft-ema").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    sd = torch.load(tmp_path / "autoencoder_kl_ema.pth", weights_only=True)
    assert "encoder.down.0.block.0.norm1.weight" in sd and "decoder.up.3.upsample.conv.weight" in sd
    for vae in ("autoencoder_kl_ema.pth", "sd-vae-ft-ema"):
        v = load_vae(str(tmp_path / vae))
        with torch.no_grad():
            z = v.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
        assert z.shape == (1, 4, 8, 8), vae
    rehearsal.standin_images(tmp_path / "train", classes=3, per_class=2, size=64)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["n0000000", "n0000001", "n0000002"]
    out = tmp_path / "latents.npz"
    assert main(["encode-latents", "--data", f"folder:{tmp_path / 'train'}", "--vae", str(tmp_path / "autoencoder_kl_ema.pth"),
                 "--image-size", "64", "--out", str(out), "--no-progress"]) in (0, None)
    data = load_dataset(f"latents:{out}")
    assert len(data) == 6 and data.num_classes == 3 and tuple(data.x.shape[1:]) == (4, 8, 8)


def test_standin_inception_and_reference_batch(tmp_path):
    """The Inception stand-in is read by the inception-adm back-end (torch-fidelity's layout); the
    reference batch carries arr_0 and the ADM statistics of that back-end's features, which is what
    the evaluation reads back."""
    from l2c.metrics.evaluate import extract_features, make_extractor
    from l2c.metrics.npz import open_npz
    w = rehearsal.standin_inception(tmp_path / "weights-inception-2015-12-05-6726825d.pth")
    ref = rehearsal.standin_reference(tmp_path / "VIRTUAL_imagenet256_labeled.npz", w, num_images=5, size=32)
    with np.load(ref) as f:
        assert sorted(f.keys()) == ["arr_0", "mu", "mu_s", "sigma", "sigma_s"]
        assert f["arr_0"].shape == (5, 32, 32, 3) and f["arr_0"].dtype == np.uint8
        assert f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048) and f["mu_s"].shape == (2023,)
        stats = {k: f[k] for k in ("mu", "sigma", "mu_s", "sigma_s")}
    batch = open_npz(ref, "reference")
    read = batch.statistics()
    for k, v in stats.items():
        np.testing.assert_array_equal(read[k], v)
    ext, info, layers = make_extractor("inception-adm", w)
    assert info["weights_sha256"] and info["feature_extractor"].startswith("inception-v3-adm-")
    feats = extract_features(batch, ext, {"pool": layers["pool"]}, 8)
    np.testing.assert_allclose(feats["pool"].mean(0), stats["mu"], rtol=1e-5, atol=1e-6)
    assert feats["pool"].std(0).mean() > 0  # the random network keeps the features' scale


# -- DDIM on a U-ViT trained on the SD schedule -------------------------------------------------------------

def uvit_ddim_reference(model, noise, labels, nfe, scale):
    """DDIM (eta 0) written from U-ViT's own conventions: SD scaled-linear betas, its Schedule's
    n = 1..1000 with alpha_bar_n = prod_{i<=n} (1 - beta_i), the network conditioned on n, guidance
    eps_c + s (eps_c - eps_u) with the null label; respaced as the ADM code strides timesteps."""
    from l2c.diffusion import space_timesteps
    betas = np.linspace(0.00085 ** 0.5, 0.0120 ** 0.5, 1000, dtype=np.float64) ** 2
    cum = np.cumprod(1 - betas)  # cum[n - 1] = U-ViT's cum_alphas[n]
    ns = [t + 1 for t in space_timesteps(1000, nfe)]
    x = noise
    null = torch.full_like(labels, model.num_classes)
    for j in range(len(ns) - 1, -1, -1):
        n = ns[j]
        a, a_prev = cum[n - 1], (cum[ns[j - 1] - 1] if j > 0 else 1.0)
        t = torch.full((len(x),), n)
        ec, eu = model(x, t, labels), model(x, t, null)
        eps = ec + scale * (ec - eu)
        x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
        x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return x


def test_ddim_on_uvit_uses_the_sd_schedule_and_uvit_guidance():
    from l2c.diffusion import Diffusion
    from l2c.models import create_model
    from l2c.sampling import ddim_diffusion, sample
    torch.manual_seed(0)
    model = create_model("U-ViT-H/2", input_size=4, hidden_size=32, num_heads=2, num_classes=10).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    assert model.dpm_defaults["noise_schedule"] == "sd"
    noise, labels = torch.randn(2, 4, 4, 4), torch.tensor([1, 7])
    got = sample(model, noise, labels, sampler="ddim", nfe=5, cfg_scale=0.4)
    with torch.no_grad():
        want = uvit_ddim_reference(model, noise, labels, 5, 0.4)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    linear = Diffusion.create(5)
    assert not np.allclose(ddim_diffusion(model, 5).betas, linear.betas)  # not DDPM's linear betas
    dit = create_model("DiT-Micro/2", input_size=8, in_channels=1, num_classes=10)
    d = ddim_diffusion(dit, 5)  # DiT: unchanged, DDPM's linear betas, timestep index input
    np.testing.assert_array_equal(d.betas, linear.betas)
    assert torch.equal(d.model_timesteps(), linear.model_timesteps())


# -- the whole rehearsal ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_rehearsal_end_to_end(tmp_path):
    """`snakemake --cores 2 --configfile config/rehearsal.yaml`: stand-ins, encode-latents, profiles,
    18 routers, 95 cells (2-job sampling fan-out + merge with VAE decoding, inception-adm evaluation
    with FID/sFID/IS/P/R/paired PSNR and the clean-fid cross-check, latency), 10 tables with the paper's
    values beside the paper cells, every figure, the report; the official routers where ../shared
    holds them. Measured on 2 CPU cores at revision 1b02cc0 (757 jobs then): 5 min 11 s (310.6 s) for this test, report and checks
    included; the workflow alone 4 min 36 s (`python benchmarks/workflow_time.py --configfile
    config/rehearsal.yaml --variants server`, docs/workflow.md)."""
    cfg = load(REHEARSAL)
    if not ROUTERS.is_dir():
        for m in cfg["models"].values():
            for s in m["nfe"].values():
                s.pop("official_router", None)
    cfg_path = tmp_path / "rehearsal.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    r = smk(tmp_path, "--cores", "2", configfile=cfg_path, timeout=6 * 3600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    import pandas as pd
    res = tmp_path / "results" / "rehearsal"
    df = pd.read_csv(res / "cells.csv")
    assert len(df) == len(cells.plan(cells.resolve(cfg)))
    for col in ("fid", "sfid", "is", "precision", "recall", "latency_s", "macs_total"):
        assert df[col].notna().all(), col
    assert df["backend"].eq("inception-adm").all()
    # each reference's features were extracted once (twice at most: two jobs starting together) and read after
    evals = [json.loads(p.read_text()) for p in res.glob("*/nfe*/eval/*.json")]
    computed = [e for e in evals if e["reference_features"].startswith("computed")]
    refs = {e["reference"] for e in evals}
    assert len(evals) == len(df) and {e["reference"] for e in computed} == refs and len(computed) <= 2 * len(refs)
    t1 = pd.read_csv(res / "tables" / "table1.csv")
    # 18 published rows with a cell, and the two official-router rows beside the paper's L2C value
    assert t1["paper FID"].notna().sum() == (20 if ROUTERS.is_dir() else 18)
    assert "meaningless" in (res / "tables" / "table1.md").read_text()
    rep = smk(tmp_path, "--report", "report.html", configfile=cfg_path)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert json.loads((res / "figures" / "fig3-redundancy-dit-xl2-256-nfe20.json").read_text())
    # the paper-specific rules ran for real: stand-ins, encode-latents, the 2-job fan-out + merge with VAE decoding
    log = r.stdout + r.stderr
    for rule in ("rehearsal_checkpoint", "rehearsal_vae_folder", "rehearsal_vae_file", "rehearsal_images", "encode_latents",
                 "train_router", "schedule", "sample_part", "merge_samples", "evaluate", "latency", "calibrate"):
        assert f"rule {rule}:" in log, rule
    assert log.count("rule sample_part:") == 2 * len(df)
    W = tmp_path / "work" / "rehearsal"
    for npz, size in (("uvit-h2-256/nfe20/samples/full.npz", 64), ("dit-xl2-512/nfe50/samples/full.npz", 128)):
        with np.load(W / npz) as f:
            assert f["arr_0"].shape == (4, size, size, 3) and f["arr_0"].dtype == np.uint8 and len(f["arr_1"]) == 4, npz
            assert f["arr_0"].std() > 0
    rec = json.loads((res / "uvit-h2-256" / "nfe20" / "routers" / "cache-lam0.1.json").read_text())
    assert rec["depth"] == 29 and rec["steps"] == 2 and len(rec["probs"]) == 20 and len(rec["probs"][0]) == 58
    with np.load(W / "inputs" / "data" / "imagenet256-uvit-latents.npz") as f:
        assert f["latents"].shape == (8, 4, 8, 8) and sorted(set(f["labels"].tolist())) == [0, 1, 2, 3]
    if ROUTERS.is_dir():  # the authors' router files applied as schedules
        assert (df["family"] == "official").sum() > 0


def test_rehearsal_tables_say_their_numbers_are_meaningless(tmp_path):
    """The table rule's note leads the caption (Markdown and LaTeX); the paper values stay beside
    the paper cells (synthetic rows for every rehearsal cell)."""
    import pandas as pd

    from analysis.tables import render_table
    cfg = resolved(REHEARSAL)
    rows = []
    for c in cells.plan(cfg):
        m = cfg["models"][c.model]
        rows.append(c.to_dict() | dict(
            model_label=m["label"], paper_model=m["paper"], sampler=m["sampler"], nfe_sampled=c.nfe, cache_sublayers=560,
            num_reused=100, remove_ratio=0.4, remove_ratio_attn=0.4, remove_ratio_mlp=0.4, macs_total=1e9, speedup_macs=1.2,
            latency_s=1.0, speedup=1.2, backend="inception-adm", feature_extractor="x", fid=300.0, sfid=400.0, precision=0.1,
            recall=0.1, psnr_db=None if c.family == "full" else 20.0, mse=1e-2, router_steps=2, router_train_s=1.0,
            **{"is": 1.0}))
    pd.DataFrame(rows).to_csv(tmp_path / "cells.csv", index=False)
    note = "REHEARSAL: our numbers are meaningless."
    t = render_table("table1", tmp_path / "cells.csv", csv=tmp_path / "t.csv", md=tmp_path / "t.md", tex=tmp_path / "t.tex",
                     note=note)
    assert (tmp_path / "t.md").read_text().count(note) == 1 and "REHEARSAL" in (tmp_path / "t.tex").read_text()
    # the 18 published Table 1 rows with a cell (not the 250-step ones), and the official routers beside L2C's value
    assert t["paper FID"].notna().sum() == 20
