"""End-to-end wall time of a workflow run from an empty working directory, per variant, in one run.

    python benchmarks/workflow_time.py                                   # config/smoke.yaml, job server on vs off
    python benchmarks/workflow_time.py --configfile config/config.yaml --variants server   # the main job, once
    python benchmarks/workflow_time.py --configfile config/rehearsal.yaml --variants server

Each variant runs ``snakemake --cores N`` on the repository's Snakefile in a fresh temporary
working directory (nothing reused between variants; committed checkpoints are read from the
repository), alternating variants when ``--rounds`` > 1. Variants: ``server`` (the default: jobs
fork from the job server, ``l2c/jobserver.py``), ``no-server`` (``job_server=false``: a process per
job), ``rate-limit`` (the job server, with Snakemake's default job-rate limit kept:
``rate_limit=true``, ``l2c/localrun.py``). Printed per variant: wall time, job count, the sum of
job wall times per rule (from the ``benchmark:`` files and, for rules without one, the jobs' log
stamps of the job server), and the ratio to the first variant; device, threads, torch version and git revision head the output;
``--json`` writes every number."""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from l2c.io import environment_record, write_json

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"server": ["job_server=true"], "no-server": ["job_server=false"],
            "rate-limit": ["job_server=true", "rate_limit=true"]}
SERVED = re.compile(r"^\[l2c job server\] child \d+: wall ([0-9.]+) s")


def rule_times(workdir: Path, work: str) -> dict[str, dict[str, float]]:
    """Per rule: jobs and summed job wall time (benchmark files where the rule has them, else the
    job server's stamp in each log)."""
    out: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"jobs": 0, "wall_s": 0.0})
    bench = workdir / work / "benchmarks"
    seen = set()
    for f in bench.glob("*/*.tsv"):
        rule = f.parent.name
        lines = f.read_text().splitlines()
        if len(lines) >= 2:
            out[rule]["jobs"] += 1
            out[rule]["wall_s"] += float(lines[1].split("\t")[0])
            seen.add(rule)
    for f in (workdir / work / "logs").glob("*/*.log"):
        rule = f.parent.name
        if rule in seen:
            continue
        for line in f.read_text(errors="replace").splitlines():
            m = SERVED.match(line)
            if m:
                out[rule]["jobs"] += 1
                out[rule]["wall_s"] += float(m[1])
    return {k: {"jobs": int(v["jobs"]), "wall_s": round(v["wall_s"], 1)} for k, v in sorted(out.items())}


def own_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` itself (not its children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run_variant(name: str, configfile: Path, cores: int, keep: bool) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"l2c-wf-{name}-"))
    cmd = ["snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile",
           str(configfile), "--cores", str(cores), "--config", *VARIANTS[name]]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=err, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        cpu = 0.0
        while True:
            cpu = own_cpu_s(proc.pid) or cpu
            try:
                code = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
        wall = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read()
    if code:
        raise SystemExit(f"variant {name}: snakemake failed (exit {code}) in {workdir}:\n{stderr[-3000:]}")
    jobs = re.search(r"(\d+) of (\d+) steps \(100%\) done", stderr)
    work = yaml.safe_load(configfile.read_text()).get("work", "work")
    res = {"variant": name, "wall_s": round(wall, 1), "jobs": int(jobs[2]) if jobs else None,
           "scheduler_cpu_s": round(cpu, 1), "rules": rule_times(workdir, work), "workdir": str(workdir) if keep else None}
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configfile", default=str(REPO / "config" / "smoke.yaml"))
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--variants", default="server,no-server", help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the working directories")
    ap.add_argument("--json", help="write the numbers here")
    a = ap.parse_args(argv)
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    env = environment_record("cpu", "fp32")
    print(f"workflow_time: {a.configfile}, --cores {a.cores}, torch {env.get('torch')}, git {env.get('git_revision')}, "
          f"{os.cpu_count()} CPUs")
    runs = [run_variant(n, Path(a.configfile).resolve(), a.cores, a.keep) for _ in range(a.rounds) for n in names]
    first = runs[0]["wall_s"]
    print(f"{'variant':<10} {'wall (s)':>9} {'jobs':>5} {'scheduler CPU (s)':>18} {'speed vs first':>15}")
    for r in runs:
        print(f"{r['variant']:<10} {r['wall_s']:>9.1f} {r['jobs'] or '?':>5} {r['scheduler_cpu_s']:>18.1f} "
              f"{first / r['wall_s']:>14.2f}x")
    for r in runs:
        print(f"\n{r['variant']}: jobs and summed job wall time per rule")
        for rule, v in r["rules"].items():
            print(f"  {rule:<16} {v['jobs']:>4} jobs {v['wall_s']:>8.1f} s")
    if a.json:
        write_json(a.json, {"configfile": a.configfile, "cores": a.cores, "environment": env, "runs": runs})


if __name__ == "__main__":
    main()
