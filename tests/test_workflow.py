"""The Snakemake workflow: dry runs of the shipped configs, config validation, overlays, lint, and
one real end-to-end run of config/smoke.yaml (pretraining, routers, sampling, evaluation, latency,
tables, figures, report) in a temporary directory. CPU only; the whole file takes ~3-4 minutes on
2 cores (the smoke run dominates)."""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.tables import TABLE_COLUMNS, tables_for
from l2c import cells

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
CONFIG = REPO / "config" / "config.yaml"
PAPER = REPO / "config" / "paper.yaml"
SMOKE = REPO / "config" / "smoke.yaml"
EMBEDDED = REPO / "l2c" / "assets" / "embedded" / "dit-digits.pt"
# until the embedded checkpoint is committed, plan the default config without it
NO_EMBEDDED = [] if EMBEDDED.exists() else ["check_files=false"]


def smk(workdir: Path, *args: str, configfiles=(CONFIG,), config=(), timeout: int = 600) -> subprocess.CompletedProcess:
    """Run snakemake on the repository's Snakefile in ``workdir``."""
    cmd = ["snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), *args]
    if configfiles:
        cmd += ["--configfile", *map(str, configfiles)]
    if config:
        cmd += ["--config", *config]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=workdir)


def dry_run(workdir: Path, **kw) -> tuple[Counter, list[str]]:
    """(jobs per rule, planned output files) of a dry run."""
    r = smk(workdir, "-n", "--cores", "1", **kw)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    if "Nothing to be done" in out:
        return Counter(), []
    stats = out[out.index("Job stats:"):]
    jobs = Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\S+)\s+(\d+)$", stats.split("\n\n")[0], re.M)
                    if m[1] != "total"})
    outputs = [f.strip() for line in re.findall(r"^\s+output: (.*)$", out, re.M) for f in line.split(",")]
    return jobs, outputs


def n_cells(configfile: Path) -> int:
    return len(cells.plan(cells.resolve(yaml.safe_load(configfile.read_text()))))


def expected_jobs(cfg: dict, digits_reference: bool) -> int:
    """Jobs of a fresh run: 4 per cell (schedule, sample, evaluate, cell), the routers, the caching
    methods' calibration passes, one profile and one latency job per (model, NFE), the reference,
    collect, tables, figures and `all`."""
    rc = cells.resolve(cfg)
    planned = cells.plan(rc)
    nfes = [(c.model, c.nfe) for c in planned if c.family == "full"]
    figures = 0
    for model, nfe in nfes:
        s = rc["models"][model]["nfe"][nfe]
        figures += 2 + bool(s["heuristics"] or s["fewer_lambdas"]) + (s["lambda"] is not None) \
            + (s["lambda"] is not None and len(set(s["thetas"]) | {s["theta"]}) > 1) + bool(s["trajectory_lambdas"]) \
            + bool(s["methods"])
    pretrain = sum(1 for m in rc["models"].values() if m["pretrain"])
    tables = tables_for([c.to_dict() | {"sampler": rc["models"][c.model]["sampler"]} for c in planned])
    return (4 * len(planned) + len(cells.routers(rc)) + len(cells.calibrations(rc)) + 2 * len(nfes) + pretrain + int(digits_reference) + 1
            + len(tables) + figures + 1)


# -- planning ---------------------------------------------------------------------------------------------

def test_default_dry_run_plans_every_job(tmp_path):
    jobs, _ = dry_run(tmp_path, config=NO_EMBEDDED)
    assert n_cells(CONFIG) == 58  # 45 + 13 caching-method cells
    assert sum(jobs.values()) == expected_jobs(yaml.safe_load(CONFIG.read_text()), digits_reference=True)
    assert jobs["train_router"] == 12 and jobs["sample"] == 58 and jobs["calibrate"] == 4 and jobs["fig9_methods"] == 3
    assert jobs["latency"] == 3  # one per (model, NFE): DiT 20 and 10, U-ViT 20


def test_paper_dry_run_plans_the_full_grid(tmp_path):
    jobs, outputs = dry_run(tmp_path, configfiles=(PAPER,), config=["check_files=false"])
    assert n_cells(PAPER) == 95  # 81 + 14 caching-method cells (DiT-XL/2 256, NFE 50 and 20)
    assert sum(jobs.values()) == expected_jobs(yaml.safe_load(PAPER.read_text()), digits_reference=False) == 467  # 95 cells, 8 (model, NFE)
    assert jobs["train_router"] == 18 and jobs["table"] == 11  # Tables 1-6, 8, 9, the Fig. 4 data, beyond, methods
    assert jobs["calibrate"] == 4 and "results/paper/tables/methods.csv" in outputs
    assert "results/paper/tables/table2.csv" in outputs and "results/paper/tables/table3.csv" in outputs


def test_smoke_dry_run(tmp_path):
    jobs, _ = dry_run(tmp_path, configfiles=(SMOKE,))
    assert sum(jobs.values()) == expected_jobs(yaml.safe_load(SMOKE.read_text()), digits_reference=True) == 84
    assert jobs["pretrain"] == 1


def test_paper_missing_files_listed_before_any_job(tmp_path):
    r = smk(tmp_path, "-n", "--cores", "1", configfiles=(PAPER,))
    assert r.returncode != 0
    err = r.stdout + r.stderr
    assert "15 input file(s) missing; nothing was run" in err
    for name in ("DiT-XL-2-256x256.pt", "sd-vae-ft-ema", "VIRTUAL_imagenet256_labeled.npz", "VIRTUAL_imagenet512.npz",
                 "imagenet256_uvit_huge.pth", "DDIM20_router.pt", "dpm50_router.pth", "imagenet256-latents.npz"):
        assert name in err
    assert "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-512x512.pt" in err
    assert "Job stats" not in err


def test_paper_dry_run_with_dummy_files(tmp_path):
    """The files only have to exist for planning: point every external path at a dummy in tmp."""
    cfg = yaml.safe_load(PAPER.read_text())
    for name, m in cfg["models"].items():
        for key in ("checkpoint", "vae", "reference"):
            (tmp_path / f"{name}-{key}").touch()
            m[key] = str(tmp_path / f"{name}-{key}")
        (tmp_path / f"{name}-data.npz").touch()
        m["data"] = f"latents:{tmp_path / f'{name}-data.npz'}"
        for s in m["nfe"].values():
            if s.get("official_router"):
                s["official_router"] = str(tmp_path / Path(s["official_router"]).name)
                Path(s["official_router"]).touch()
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(cfg))
    jobs, _ = dry_run(tmp_path, configfiles=(tmp_path / "paper.yaml",))
    assert sum(jobs.values()) == 467


def test_overlay_adds_a_model_row(tmp_path):
    """Adding a model row is config only (config/examples/new-row.yaml, the README's worked example):
    the dry run plans exactly that row's cells, its pretraining, router, profile and figures."""
    overlay = REPO / "config" / "examples" / "new-row.yaml"
    base_jobs, base_out = dry_run(tmp_path, config=NO_EMBEDDED)
    jobs, out = dry_run(tmp_path, configfiles=(CONFIG, overlay), config=NO_EMBEDDED)
    new = set(out) - set(base_out)
    assert sorted(o for o in new if "/cells/" in o) == sorted(
        f"results/dit-s-digits/nfe16/cells/{m}.json" for m in ("full", "l2c-lam0.0001-th0.1", "fewer-lam0.0001"))
    assert all("dit-s-digits" in o for o in new)
    # 3 cells x 4 stages + latency + pretrain + router + profile + 4 figures (Fig. 3, 4, 5, 7); tables and
    # collect re-run
    assert sum(jobs.values()) - sum(base_jobs.values()) == 20
    assert jobs["pretrain"] == 1


def test_sample_jobs_fan_out(tmp_path):
    jobs, _ = dry_run(tmp_path, config=NO_EMBEDDED + ["sample_jobs=3"])
    assert jobs["sample_part"] == 3 * 58 and jobs["merge_samples"] == 58 and "sample" not in jobs


@pytest.mark.parametrize("overlay, named", [
    ({"sampling": {"num_sample": 10}}, "num_sample"),
    ({"resutls": "out"}, "resutls"),
    ({"models": {"dit-digits": {"nfe": {20: {"lambda_s": [1.0e-4]}}}}}, "lambda_s"),
    ({"models": {"dit-digits": {"cfg": 1.5}}}, "cfg"),
])
def test_typo_key_fails_naming_it(tmp_path, overlay, named):
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(overlay))
    r = smk(tmp_path, "-n", "--cores", "1", configfiles=(CONFIG, tmp_path / "typo.yaml"), config=NO_EMBEDDED)
    assert r.returncode != 0
    assert f"'{named}' was unexpected" in r.stdout + r.stderr


def test_unknown_model_fails_naming_it(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"models": {"big": {
        "model": "DiT-XXL/2", "checkpoint": str(EMBEDDED), "nfe": {20: {"lambdas": [1.0e-4]}}}}}))
    r = smk(tmp_path, "-n", "--cores", "1", configfiles=(CONFIG, tmp_path / "bad.yaml"), config=NO_EMBEDDED)
    assert r.returncode != 0
    assert "'DiT-XXL/2' is not one of" in r.stdout + r.stderr


def test_cross_reference_errors_name_the_key(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"models": {"dit-digits": {"nfe": {20: {"lambda": 0.5}}}}}))
    r = smk(tmp_path, "-n", "--cores", "1", configfiles=(CONFIG, tmp_path / "bad.yaml"), config=NO_EMBEDDED)
    assert r.returncode != 0
    assert "models.dit-digits.nfe.20: lambda 0.5 (in lambda) is not among lambdas" in r.stdout + r.stderr


# -- the caching methods as cells (l2c.caching registry) -------------------------------------------------

def test_method_cells_are_planned_from_the_registry(monkeypatch):
    """A family registered in l2c.caching shows up as cells (named by its tags) without touching
    l2c/cells.py; calibration passes are planned for the families that need one."""
    from l2c.caching import registry
    fake = registry.Family(name="fakecache", summary="test", defaults={"every": 2, "depth": 1}, build=lambda ctx, p: None,
                           calibration="fakecache", tags={"every": "e"})
    monkeypatch.setitem(registry.FAMILIES, "fakecache", fake)
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["models"]["smoke"]["nfe"][4]["methods"] = {"fakecache": [{}, {"every": 3}, {"every": 3, "depth": 2}]}
    cells.check_schema(cfg)
    rc = cells.resolve(cfg)
    got = [(c.method, c.family, c.caching, c.params) for c in cells.plan(rc) if c.family == "method"]
    assert got == [("fakecache", "method", "fakecache", {}), ("fakecache-e3", "method", "fakecache", {"every": 3}),
                   ("fakecache-e3depth2", "method", "fakecache", {"every": 3, "depth": 2})]
    assert cells.calibrations(rc) == [("smoke", 4, "fakecache")]
    tables = tables_for([c.to_dict() | {"sampler": "ddim"} for c in cells.plan(rc)])
    assert tables[-1] == "methods"


def test_planning_imports_no_torch():
    """The workflow plans (registry included) at parse time without importing torch."""
    code = ("import sys, yaml; from l2c import cells; "
            f"cells.plan(cells.resolve(yaml.safe_load(open({str(CONFIG)!r})))); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run(["python", "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("methods, message", [
    ({"taylorsear": [{}]}, "models.dit-digits.nfe.20.methods.taylorsear: unknown caching method; known: dbcache"),
    ({"taylorseer": [{"intervl": 3}]}, "models.dit-digits.nfe.20.methods.taylorseer.0.intervl: not a parameter of taylorseer"),
    ({"taylorseer": {"interval": 3}}, "models.dit-digits.nfe.20.methods.taylorseer: {'interval': 3} is not of type"),
    ({"teacache": [0.4]}, "models.dit-digits.nfe.20.methods.teacache.0: 0.4 is not of type 'object'"),
    ({"teacache": []}, "models.dit-digits.nfe.20.methods.teacache: expected a list of parameter rows"),
])
def test_method_config_errors_name_the_key(methods, message):
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["models"]["dit-digits"]["nfe"][20]["methods"] = methods
    with pytest.raises(cells.ConfigError) as e:
        cells.check_schema(cfg)
        cells.resolve(cfg)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.skipif(not EMBEDDED.exists(), reason="needs the embedded checkpoint")
def test_method_stages_calibrate_spec_sample_latency_record(tmp_path):
    """The stages of a calibrated method cell (TeaCache) on the embedded DiT at NFE 8: the calibration
    pass into the given file, the method spec, sampling with its MACs, latency and the cell's row."""
    from l2c.generate import generate
    from l2c.io import read_json
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["models"] = {"dit-digits": cfg["models"]["dit-digits"]}
    cfg["models"]["dit-digits"]["nfe"] = {8: {"methods": {"teacache": [{"threshold": 0.4}]}}}
    rc = cells.resolve(cfg)
    m = rc["models"]["dit-digits"]
    m["sampling"].update(num_samples=4, shard_size=4, batch_size=4)
    cell = next(c for c in cells.plan(rc) if c.family == "method").to_dict()
    assert (cell["method"], cell["calibration"]) == ("teacache-th0.4", "teacache")
    cal = tmp_path / "calibration" / "teacache.json"
    cells.calibrate_cell(m, 8, "teacache", cal, threads=1)
    assert len(read_json(cal)["coefficients"]) == 5 and not Path(m["checkpoint"]).with_suffix(".teacache.json").exists()
    spec = tmp_path / "spec.json"
    cells.make_schedule(cell, m, spec, calibration=str(cal))
    sc = read_json(spec)
    assert sc["kind"] == "method" and sc["method"] == "teacache" and sc["params"] == {"threshold": 0.4}
    generate(cells.sample_config(m, spec, "cpu", "fp32"), tmp_path / "s.npz", progress=False)
    samples = read_json(tmp_path / "s.json")
    lat = cells.measure_latency(m, spec, 8, device="cpu", dtype="fp32", batch=2, repeats=1, warmup=0, seed=0, threads=1)
    assert lat["macs_full"] == 8 * lat["macs_per_eval"] and lat["latency_s"] > 0
    ev = {"backend": "digits", "n_samples": 4, "n_ref": 500, "fid": 1.0, "paired": {"psnr_db": 30.0}}
    rec = cells.cell_record(cell, m, sc, ev, lat, samples=samples)
    assert rec["macs_total"] == samples["method_macs_per_image"] and rec["speedup_macs"] >= 1
    assert rec["caching"] == "teacache" and rec["params"] == "threshold=0.4"


@pytest.mark.skipif(not EMBEDDED.exists(), reason="needs the embedded checkpoint")
def test_latency_of_a_group_brackets_its_cells_with_the_uncached_sampler(tmp_path):
    """One latency job per (model, NFE): the uncached cell, a cached schedule, fewer steps and a caching
    method timed in the same rounds, the uncached sampler around every 3 cells; every record shares the
    uncached times, has its own times and per-round speedups, the MACs of its schedule or decisions,
    and equals a group of one in everything but the timings."""
    from l2c.bench import fraction_schedule
    from l2c.cache import CacheSchedule
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["models"] = {"dit-digits": cfg["models"]["dit-digits"]}
    cfg["models"]["dit-digits"]["nfe"] = {6: {"methods": {"taylorseer": [{"interval": 3, "order": 1}]}}}
    rc = cells.resolve(cfg)
    m = rc["models"]["dit-digits"]
    paths = {"full": tmp_path / "full.json", "cached": tmp_path / "cached.json", "fewer": tmp_path / "fewer.json",
             "method": tmp_path / "method.json"}
    CacheSchedule.from_mask(np.ones((6, 24), bool), [], sampler="ddim").save(paths["full"])
    fraction_schedule(6, 12, 0.5).save(paths["cached"])
    CacheSchedule.from_mask(np.ones((4, 24), bool), [], sampler="ddim").save(paths["fewer"])
    method = next(c for c in cells.plan(rc) if c.family == "method").to_dict()
    cells.make_schedule(method, m, paths["method"])
    kw = dict(device="cpu", dtype="fp32", batch=2, repeats=3, warmup=0, seed=0, threads=1)
    res = cells.measure_latencies(m, paths, 6, **kw)
    recs = res["cells"]
    assert set(recs) == set(paths) and cells.LATENCY_BRACKET == 3
    assert len(res["latency_full_all_s"]) == 3 * 2  # per round: before the first cell and after the third
    assert all(r["latency_full_all_s"] == res["latency_full_all_s"] for r in recs.values())
    assert recs["full"]["latency_all_s"] == res["latency_full_all_s"] and recs["full"]["speedup"] == 1.0
    for k in ("cached", "fewer", "method"):
        r = recs[k]
        assert len(r["latency_all_s"]) == len(r["speedup_all"]) == 3 and r["speedup"] == statistics.median(r["speedup_all"])
        assert r["latency_s"] == statistics.median(r["latency_all_s"])
    assert len({tuple(recs[k]["latency_all_s"]) for k in ("cached", "fewer", "method")}) == 3  # timed separately
    per_eval = recs["full"]["macs_per_eval"]
    assert recs["full"]["macs_total"] == recs["full"]["macs_full"] == 6 * per_eval
    assert recs["fewer"]["nfe_sampled"] == 4 and recs["fewer"]["macs_total"] == 4 * per_eval
    assert recs["cached"]["macs_total"] < 6 * per_eval and recs["method"]["method"] == "taylorseer"
    assert recs["method"]["macs_total"] < 6 * per_eval
    alone = cells.measure_latency(m, paths["cached"], 6, **kw)
    timing = {"latency_s", "latency_full_s", "speedup", "latency_all_s", "latency_full_all_s", "speedup_all"}
    assert {k: v for k, v in alone.items() if k not in timing} == {k: v for k, v in recs["cached"].items() if k not in timing}


def test_methods_table_puts_published_numbers_beside_paper_cells():
    """Synthetic rows for config/paper.yaml: the methods table lists the caching-method cells with
    L2C and the others, and TaylorSeer N3O3 / N5O3 and SmoothCache carry their published DDIM-50 numbers."""
    from analysis import tables as T
    cfg = cells.resolve(yaml.safe_load(PAPER.read_text()))
    rows = []
    for c in cells.plan(cfg):
        m = cfg["models"][c.model]
        rows.append(c.to_dict() | dict(
            model_label=m["label"], paper_model=m["paper"], sampler=m["sampler"], nfe_sampled=c.nfe, cache_sublayers=None,
            num_reused=None, remove_ratio=0.4, remove_ratio_attn=None, remove_ratio_mlp=None, macs_total=1e12, speedup_macs=2.0,
            latency_s=1.0, speedup=1.5, backend="inception-adm", feature_extractor="x", fid=3.0, sfid=4.0, precision=0.8,
            recall=0.5, psnr_db=None if c.family == "full" else 30.0, mse=1e-3, router_steps=1, router_train_s=1.0,
            params=None, **{"is": 200.0}))
    df = pd.DataFrame(rows)
    t = T.methods(df, T.read_paper())
    assert list(t.columns) == TABLE_COLUMNS["methods"]
    ours = t[t["family"] == "method"]
    assert len(ours) == 14 and set(ours["NFE"]) == {50, 20}
    assert {"TaylorSeer", "TeaCache", "First-block cache", "ToCa", "SmoothCache", "Δ-DiT-style"} == set(ours["method"])
    at50 = ours[ours["NFE"] == 50]
    assert sorted(at50["paper FID"].dropna()) == [2.34, 2.65, 2.65, 3.04]
    assert ours.loc[ours["NFE"] == 20, "paper FID"].isna().all()  # nothing published at DDIM-20
    assert {"L2C", "DDIM"} <= set(t["method"])


def test_schema_knows_every_registered_model():
    from l2c.models import model_names
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert set(schema["$defs"]["modelname"]["enum"]) - {None} == set(model_names())


def test_lint_is_clean(tmp_path):
    r = subprocess.run(["snakemake", "--lint", *(["--config", *NO_EMBEDDED] if NO_EMBEDDED else [])], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


# -- the smoke run ---------------------------------------------------------------------------------------------

def test_smoke_end_to_end(tmp_path):
    """Real pretraining, router training, sampling, evaluation, latency, tables, figures and report,
    every job served by the job server (its stamp ends every job's log, the server is gone after);
    a re-run plans nothing; deleting one cell's result re-plans only what depends on it."""
    r = smk(tmp_path, "--cores", "2", configfiles=(SMOKE,), timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "Snakemake's default job-rate limit is off" in r.stdout + r.stderr  # l2c.localrun
    logs = [f for f in (tmp_path / "work" / "logs").glob("*/*.log")]
    assert len(logs) > 80 and all("[l2c job server] child" in f.read_text(errors="replace") for f in logs)
    served = re.search(r"serving (\S+) \(pid (\d+)\)", (tmp_path / "work" / "logs" / "job-server.log").read_text())
    assert served and not os.path.exists(served[1])  # the run's server stopped and removed its socket
    res = tmp_path / "results"
    planned = cells.plan(cells.resolve(yaml.safe_load(SMOKE.read_text())))
    df = pd.read_csv(res / "cells.csv")
    assert len(df) == len(planned) == 15
    for col in ("fid", "is", "sfid", "precision", "recall", "latency_s", "speedup", "macs_total", "remove_ratio"):
        assert df[col].notna().all(), col
    assert (df.loc[df["family"] != "full", "paired_with"].notna()).all()
    assert (df.loc[df["family"] == "l2c", "router_train_s"] > 0).all()
    # the L2C and learning-to-drop routers trained in one job (the drop router's job only wrote its files)
    assert df.loc[df["family"].isin(["l2c", "drop"]), "routers_per_run"].eq(2).all()
    assert df["backend"].eq("digits").all()
    fewer = df[df["family"] == "fewer"].iloc[0]
    assert fewer["nfe_sampled"] <= fewer["nfe"]

    expected = tables_for([c.to_dict() | {"sampler": "ddim"} for c in planned])
    assert expected == ["table1", "table4", "table5", "table6", "table8", "fig4", "beyond", "methods"]
    for name in expected:
        t = pd.read_csv(res / "tables" / f"{name}.csv")
        assert list(t.columns) == TABLE_COLUMNS[name], name
        assert len(t) > 0 and t["backend"].str.startswith("digits").all(), name
        assert "Metric backend: digits" in (res / "tables" / f"{name}.md").read_text()
        tex = (res / "tables" / f"{name}.tex").read_text()
        assert r"\toprule" in tex and r"\bottomrule" in tex

    from PIL import Image
    figs = sorted((res / "figures").glob("*.png"))
    assert [f.name.split("-")[0] for f in figs] == ["fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "fig9"]
    # the caching-method cell: MACs of the decisions its sampling took, a methods-table row with finite numbers
    ts = df[df["family"] == "method"].iloc[0]
    assert ts["method"] == "taylorseer-n3o1f1" and ts["macs_source"] == "sampling (decisions taken)"
    assert 1.5 < ts["speedup_macs"] < 2.5  # 2 of 4 steps computed (the adaLN still runs on forecast steps)
    mt = pd.read_csv(res / "tables" / "methods.csv")
    row = mt[mt["family"] == "method"].iloc[0]
    assert row["method"] == "TaylorSeer" and row["params"] == "interval=3, order=1, first_enhance=1"
    for col in ("speedup (MACs)", "speedup", "FID", "sFID", "PSNR (dB)"):
        assert pd.notna(row[col]) and abs(float(row[col])) < float("inf"), col
    for png in figs:
        meta = json.loads(png.with_suffix(".json").read_text())
        assert {"versions", "analysis_git_revision", "seeds", "environment"} <= set(meta)
        assert json.loads(Image.open(png).text["l2c"])["title"] == meta["title"]
        assert png.with_suffix(".pdf").stat().st_size > 0

    report = smk(tmp_path, "--report", "report.html", configfiles=(SMOKE,))
    assert report.returncode == 0, report.stderr[-3000:]
    html = (tmp_path / "report.html").read_text()
    assert "Table 1 analogue" in html and "Fig. 4 analogue" in html

    jobs, _ = dry_run(tmp_path, configfiles=(SMOKE,))
    assert not jobs, f"re-run after success plans {jobs}"

    (res / "smoke" / "nfe4" / "cells" / "bottom-lam0.01.json").unlink()
    jobs, outputs = dry_run(tmp_path, configfiles=(SMOKE,))
    assert jobs["cell"] == 1 and jobs["collect"] == 1
    assert set(jobs) == {"cell", "collect", "table", "fig4_matched", "fig6_theta", "fig8_speedup", "fig9_methods", "all"}

    # sampling fanned out over shard-range jobs + a merge gives the same bytes as one job
    npz = tmp_path / "work" / "smoke" / "nfe4" / "samples" / "full.npz"
    before = npz.read_bytes()
    npz.unlink()
    r = smk(tmp_path, "--cores", "2", str(npz.relative_to(tmp_path)), configfiles=(SMOKE,),
            config=["sample_jobs=2", "rate_limit=true"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("rule sample_part:") == 2 and npz.read_bytes() == before
    assert "job-rate limit is off" not in r.stdout + r.stderr  # rate_limit=true keeps Snakemake's default


@pytest.mark.parametrize("exclusive, threads", [(True, 2), (False, 1)])
def test_latency_jobs_reserve_every_core_unless_not_exclusive(tmp_path, exclusive, threads):
    """On CPU a latency job takes every core given to the run (nothing runs beside it);
    ``latency.exclusive: false`` leaves it its torch threads only."""
    (tmp_path / "lat.yaml").write_text(yaml.safe_dump({"latency": {"exclusive": exclusive}}))
    r = smk(tmp_path, "-n", "--cores", "2", configfiles=(SMOKE, tmp_path / "lat.yaml"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    blocks = [b for b in re.split(r"\n(?=\[[^\n]*\]\n(?:local)?rule )", r.stdout + r.stderr) if "rule latency:" in b]
    assert len(blocks) == 1  # one latency job per (model, NFE)
    for b in blocks:
        m = re.search(r"^\s+threads: (\d+)$", b, re.M)
        assert (int(m[1]) if m else 1) == threads, b[:300]


def test_local_runs_drop_only_snakemakes_default_rate_limit():
    """l2c.localrun: the default limiter (100 jobs per second) of a local run goes; a user's own
    limit and a cluster run's limiter stay."""
    from types import SimpleNamespace

    from snakemake.scheduling.job_scheduler import JobRateLimiter
    from snakemake.settings.types import MaxJobsPerTimespan

    from l2c.localrun import drop_default_rate_limit

    def workflow(limit: str, local: bool = True):
        scheduler = SimpleNamespace(job_rate_limiter=JobRateLimiter(MaxJobsPerTimespan.parse_choice(limit)))
        return SimpleNamespace(local_exec=local, scheduler=scheduler)

    w = workflow("100/1s")
    assert drop_default_rate_limit(w) and w.scheduler.job_rate_limiter is None
    for w in (workflow("10/1s"), workflow("100/1m"), workflow("100/1s", local=False)):
        assert not drop_default_rate_limit(w) and w.scheduler.job_rate_limiter is not None
    assert not drop_default_rate_limit(SimpleNamespace(local_exec=True, scheduler=SimpleNamespace(job_rate_limiter=None)))


# -- tables without a run (pure pandas) ------------------------------------------------------------------

def test_tables_put_paper_values_beside_paper_cells():
    """Synthetic rows for every cell of config/paper.yaml: every table renders with its columns, and
    the published numbers land on the matching cells (main lambdas, official routers, U-ViT tables)."""
    from analysis import tables as T
    cfg = cells.resolve(yaml.safe_load(PAPER.read_text()))
    rows = []
    for c in cells.plan(cfg):
        m = cfg["models"][c.model]
        rows.append(c.to_dict() | dict(
            model_label=m["label"], paper_model=m["paper"], sampler=m["sampler"], nfe_sampled=c.nfe, cache_sublayers=560,
            num_reused=100, remove_ratio=0.4, remove_ratio_attn=0.4, remove_ratio_mlp=0.4, macs_total=1e12, speedup_macs=1.2,
            latency_s=1.0, speedup=1.2, backend="inception-adm", feature_extractor="x", fid=3.0, sfid=4.0, precision=0.8,
            recall=0.5, psnr_db=None if c.family == "full" else 30.0, mse=1e-3, router_steps=1, router_train_s=1.0,
            **{"is": 200.0}))
    df = pd.DataFrame(rows)
    paper = T.read_paper()
    got = {n: T.TABLES[n](df, paper) for n in T.tables_for([c | {"sampler": c["sampler"]} for c in rows])}
    assert list(got) == ["table1", "table2", "table3", "table4", "table5", "table6", "table8", "table9", "fig4", "beyond", "methods"]
    for name, t in got.items():
        assert list(t.columns) == TABLE_COLUMNS[name] and len(t), name
    t1 = got["table1"].set_index(["model", "method", "NFE", "lambda"], drop=False)
    assert t1.loc[("DiT-XL/2 256", "L2C", 20, 5e-6), "paper FID"] == 3.46
    assert t1.loc[("DiT-XL/2 256", "DDIM (fewer steps)", 20, 5e-6), "paper NFE"] == 16
    assert t1.loc[("DiT-XL/2 256", "L2C", 20, 1e-5), "paper FID"] != t1.loc[("DiT-XL/2 256", "L2C", 20, 1e-5), "paper FID"]  # NaN
    assert (got["table9"]["paper removed"].tolist() == [0, 129, 176, 248, 300, 404, 460])
    assert got["table6"]["paper FID"].tolist() == [2.57, 2.80, 5.30]
    t3 = got["table3"]
    assert set(t3["method"]) >= {"DeepCache-style", "Faster-Diffusion-style", "L2C", "DPM-Solver-2"}
    assert t3.loc[t3["method"] != "Interval caching (FORA-style)", "paper FID"].notna().all()  # the paper has no interval row
    assert got["table2"]["paper FID"].notna().all()


def test_best_heuristic_and_beyond_rows():
    """The best heuristic at each L2C budget is the family with the highest mean paired PSNR (seeded
    families averaged over seeds); the beyond table keeps the trajectory cells and every fewer twin."""
    from analysis import tables as T
    base = dict(model="m", model_label="m", paper_model=None, sampler="ddim", nfe=20, nfe_sampled=20, theta=0.1, lam=1e-4,
                sweep=False, match="l2c-a", num_reused=10, cache_sublayers=20, macs_total=1e9, backend="digits",
                feature_extractor="x", fid=3.0, latency_s=1.0, speedup=1.0, sfid=4.0, precision=0.9, recall=0.5,
                mse=1e-3, remove_ratio=0.5, remove_ratio_attn=0.5, remove_ratio_mlp=0.5, router_steps=1, router_train_s=1.0,
                **{"is": 9.0})
    rows = [dict(base, method="top", family="top", seed=None, psnr_db=39.0, speedup_macs=1.4),
            dict(base, method="random-s0", family="random", seed=0, psnr_db=41.0, speedup_macs=1.4),
            dict(base, method="random-s1", family="random", seed=1, psnr_db=36.0, speedup_macs=1.4),  # mean 38.5 < 39
            dict(base, method="metrics", family="metrics", seed=None, psnr_db=38.0, speedup_macs=1.4),
            dict(base, method="bottom-b", family="bottom", seed=None, psnr_db=30.0, match="l2c-b", speedup_macs=1.8),
            dict(base, method="full", family="full", seed=None, psnr_db=None, match=None, speedup_macs=1.0),
            dict(base, method="l2c-a", family="l2c", seed=None, psnr_db=42.0, match=None, speedup_macs=1.4),
            dict(base, method="traj", family="trajectory", seed=None, psnr_db=35.0, match=None, speedup_macs=2.4),
            dict(base, method="fewer-traj", family="fewer", seed=None, psnr_db=30.0, match="traj", sweep=True, speedup_macs=2.4),
            dict(base, method="l2c-a-th0.5", family="l2c", seed=None, psnr_db=40.0, match=None, sweep=True, speedup_macs=1.5)]
    df = pd.DataFrame(rows)
    best = T.best_heuristic(df)
    assert sorted(best["method"]) == ["bottom-b", "top"]
    got = T.beyond(df, T.read_paper())
    assert list(got["family"]) == ["full", "l2c", "top", "bottom", "fewer", "trajectory"]  # by MACs speedup, then family


def test_router_passes_group_the_routers_that_share_their_passes():
    """joint_routers (the default): per model and NFE, the single-step routers (L2C lambdas and
    learning-to-drop) train in the first one's job and, apart, the trajectory routers; with
    joint_routers=false (a string from --config) every router is its own job."""
    raw = yaml.safe_load(CONFIG.read_text())
    passes = cells.router_passes(cells.resolve(raw))
    single = ["cache-lam1e-05", "cache-lam0.0001", "cache-lam0.001", "drop-lam0.0001"]
    assert all(passes[("dit-digits", 20, r)] == single for r in single)
    assert passes[("dit-digits", 20, "trajectory-lam0.0003")] == ["trajectory-lam0.0001", "trajectory-lam0.0003",
                                                                   "trajectory-lam0.001"]
    assert passes[("uvit-digits", 20, "cache-lam0.0001")] == ["cache-lam1e-05", "cache-lam0.0001"]
    alone = cells.router_passes(cells.resolve({**raw, "joint_routers": "false"}))
    assert alone.keys() == passes.keys() and all(v == [k[2]] for k, v in alone.items())


def test_fig5_marks_exactly_the_reused_sublayers(tmp_path):
    """Fig. 5: one heat map per branch over the cache steps, a dot on every sub-layer the threshold
    reuses (probability <= theta) and on no other."""
    import matplotlib
    matplotlib.use("Agg")
    from analysis.figures import fig5_router
    rng = np.random.default_rng(0)
    probs = rng.uniform(size=(6, 8))  # NFE 6, depth 4: (attn, mlp) per block
    path = tmp_path / "router.json"
    path.write_text(json.dumps({"probs": probs.tolist(), "cache_steps": [1, 3, 5], "nfe": 6, "lambda": 1e-3,
                                "objective": "cache", "steps": 10}))
    fig, meta = fig5_router(str(path), "test", 0.4)
    for ax, branch in zip(fig.axes[:2], (0, 1)):
        sub = probs[[1, 3, 5]][:, branch::2]
        dots = {(round(x - 0.5), round(y - 0.5)) for c in ax.collections[1:] for x, y in c.get_offsets()}
        assert dots == {(j, i) for i, j in zip(*np.nonzero(sub <= 0.4))} and 0 < len(dots) < sub.size
        assert f"{100 * (sub <= 0.4).mean():.1f}% reused" in ax.get_title()
    assert meta["theta"] == 0.4
