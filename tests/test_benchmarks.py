"""The benchmark scripts run (tiny settings; their numbers are not checked: speed is measured by
running them, never by tests), and the plan given to the authors' model is the schedule's."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from l2c.cache import CacheSchedule

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_roofline_runs_and_reports_ratios(tmp_path):
    out = tmp_path / "roofline.json"
    r = subprocess.run([sys.executable, str(BENCH / "roofline.py"), "--threads", "1", "--batch", "2", "--nfe", "2",
                        "--repeats", "1", "--no-compile", "--models", "dit", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(row["schedule"], row["path"]) for row in rows] == [("full", "eager"), ("cached", "eager")]
    for row in rows:
        assert row["sgemm_gflops"] > 0 and row["ratio"] == pytest.approx(row["gflops_linear"] / row["sgemm_gflops"])
        assert row["gflops_all"] > row["gflops_linear"]  # attention matmuls on top of the linear layers
        assert {"torch", "git_revision", "num_threads", "device"} <= set(row["environment"])
    assert "sgemm GFLOP/s" in r.stdout and "rev " in r.stdout


def test_router_paths_trains_one_workflow_job_on_each_path(tmp_path):
    """benchmarks/router_paths.py trains the routers of one workflow job (the main config's
    single-step group: three L2C lambdas and learning-to-drop) on each path it is given, and the
    stacked students give the one-by-one routers bit for bit."""
    out = tmp_path / "paths.json"
    r = subprocess.run([sys.executable, str(BENCH / "router_paths.py"), "--objective", "single-step", "--steps", "1",
                        "--rounds", "1", "--paths", "one-by-one", "stacked", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=BENCH.parent)
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["routers"] == [["cache", 1e-5], ["cache", 1e-4], ["cache", 1e-3], ["drop", 1e-4]] and d["config_steps"] == 300
    rows = d["paths"]
    assert list(rows) == ["one-by-one", "stacked"] and rows["one-by-one"]["speedup"] == 1.0
    assert rows["stacked"]["bit_identical_to_baseline"] is True
    for row in rows.values():
        assert row["job_s_projected"] == pytest.approx(row["warmup_s"] + 300 * row["s_per_it"])
    assert "rev " in r.stdout and "bit for bit" in r.stdout


def test_gelu_forms_times_every_form_against_fp64(tmp_path):
    out = tmp_path / "gelu.json"
    r = subprocess.run([sys.executable, str(BENCH / "gelu_forms.py"), "--rows", "8", "--width", "16", "--calls", "1",
                        "--rounds", "1", "--forms", "tanh form, eager", "exact (erf), eager", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)  # eager forms only: compiling is tested elsewhere
    assert r.returncode == 0, r.stderr
    forms = json.loads(out.read_text())["forms"]
    assert set(forms) == {"tanh form, eager", "exact (erf), eager"} and forms["tanh form, eager"]["speedup_vs_baseline"] == 1.0
    assert all(0 <= f["max_abs_error_vs_fp64"] < 1e-5 and f["ms"] > 0 for f in forms.values())
    assert "rev " in r.stdout


def test_vs_official_plan_is_the_schedule():
    sys.path.insert(0, str(BENCH))
    from vs_official import install_plan
    nfe, depth = 6, 3
    flat = np.ones((nfe, 2 * depth), bool)
    flat[1, [0, 3]] = False
    flat[3, :] = False
    sched = CacheSchedule.from_mask(flat, [1, 3, 5])
    theirs = SimpleNamespace()
    timestep_map = [0, 200, 400, 600, 800, 999]
    install_plan(theirs, sched, timestep_map)
    assert theirs.timestep_map == {t: i for i, t in enumerate(timestep_map)}
    # router index i = NFE-1-k; computed flat indices at cache steps, None elsewhere (full recompute)
    assert [None if r is None else r.tolist() for r in theirs.rank] == [[0, 1, 2, 3, 4, 5], None, [], None, [1, 2, 4, 5], None]


def test_workflow_time_sums_job_time_per_rule(tmp_path):
    """benchmarks/workflow_time.py's per-rule sums: benchmark files where a rule has them, else the
    job server's stamp in each job log (a rule with both is counted once)."""
    sys.path.insert(0, str(BENCH))
    from workflow_time import VARIANTS, rule_times
    bench, logs = tmp_path / "work" / "benchmarks", tmp_path / "work" / "logs"
    for rule, times in (("sample", [40.5, 9.5]), ("evaluate", [3.0])):
        (bench / rule).mkdir(parents=True)
        for i, t in enumerate(times):
            (bench / rule / f"{i}.tsv").write_text(f"s\th:m:s\n{t}\t0:00:{int(t)}\n")
    for rule, lines in (("schedule", ["x", "[l2c job server] child 12: wall 1.5 s, CPU 1.0 s, max RSS 9 MB"]),
                        ("sample", ["[l2c job server] child 13: wall 99.0 s, CPU 1.0 s, max RSS 9 MB"])):
        (logs / rule).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            (logs / rule / f"{i}.log").write_text("\n".join(lines) + "\n")
    assert rule_times(tmp_path, "work") == {"evaluate": {"jobs": 1, "wall_s": 3.0}, "sample": {"jobs": 2, "wall_s": 50.0},
                                            "schedule": {"jobs": 2, "wall_s": 3.0}}
    assert VARIANTS["no-server"] == ["job_server=false"]


def test_inception_layout_runs_and_compares_both_layouts(tmp_path):
    out = tmp_path / "layout.json"
    r = subprocess.run([sys.executable, str(BENCH / "inception_layout.py"), "--batch", "1", "--size", "16", "--repeats", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["speedup"] == pytest.approx(res["nchw_s"] / res["channels_last_s"])
    assert set(res["max_relative_difference"]) == {"2048", "spatial", "logits_unbiased"}
    assert max(res["max_relative_difference"].values()) < 1e-4  # the same features up to fp32 reassociation
    assert "channels-last" in r.stdout and "git " in r.stdout
