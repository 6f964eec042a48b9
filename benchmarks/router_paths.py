"""Router training of one workflow job, on each path, side by side in one run.

    python benchmarks/router_paths.py                                    # dit-digits NFE 20, config/config.yaml
    python benchmarks/router_paths.py --objective single-step --steps 30
    python benchmarks/router_paths.py --json results/benchmarks/router-paths-trajectory.json

Trains the routers that one ``train_router`` job of the workflow trains together (the model row's
lambdas of one objective at one NFE, with the config's router settings: ``trajectory_router`` for
the trajectory objective, ``router`` otherwise, learning-to-drop beside L2C) for ``--steps``
iterations, on each path:
- ``one-by-one``: each router's student run and backpropagated after the other (``stack_students: 1``);
- ``stacked``: the students side by side in one batch, one backward (``stack_students: 0``);
- ``stacked-compiled``: the same through the compiled branches (``compile: true``).
The first run of each path is its warm-up (compilation, from this machine's inductor cache when
it holds the graphs) and is printed apart; then ``--rounds`` timed runs per path, interleaved.
Printed per path: warm-up seconds, seconds per iteration (median), the ratio to the first path
(``one-by-one`` by default), the projected job time at the config's steps (warm-up + steps x s/it)
and whether the routers equal the first path's bit for bit; device, threads, torch version and git revision head
the output. ``--json`` writes every number."""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from l2c.io import environment_record, write_json
from l2c.router import RouterConfig, load_router, train_routers

PATHS = {"one-by-one": dict(stack_students=1, compile=False), "stacked": dict(stack_students=0, compile=False),
         "stacked-compiled": dict(stack_students=0, compile=True)}


def job_configs(configfile: str, model: str, nfe: int, objective: str, threads: int) -> list[RouterConfig]:
    """The routers one workflow job trains together (``l2c.cells.routers``), as the workflow configures them."""
    import yaml

    from l2c.cells import resolve, router_config, router_options, routers
    cfg = resolve(yaml.safe_load(Path(configfile).read_text()))
    m = cfg["models"][model]
    members = [(obj, lam) for mod, n, obj, lam in routers(cfg)
               if mod == model and n == nfe and (obj == "trajectory") == (objective == "trajectory")]
    if not members:
        raise SystemExit(f"{configfile}: {model} NFE {nfe} trains no {objective} routers")
    return [router_config(m, nfe, obj, lam, router_options(m, nfe, obj), threads) for obj, lam in members]


def train(cfgs: list[RouterConfig], steps: int) -> tuple[float, list[torch.Tensor]]:
    cfgs = [replace(c, steps=steps, ckpt_every=10 ** 9, log_every=10 ** 9) for c in cfgs]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        outs = train_routers(cfgs, [Path(tmp) / str(i) for i in range(len(cfgs))], progress=False)
        secs = time.perf_counter() - t0
        return secs, [load_router(o)["beta"] for o in outs]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configfile", default="config/config.yaml")
    ap.add_argument("--model", default="dit-digits")
    ap.add_argument("--nfe", type=int, default=20)
    ap.add_argument("--objective", choices=["trajectory", "single-step"], default="trajectory")
    ap.add_argument("--steps", type=int, default=8, help="iterations per timed run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS), help="the first is the baseline")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    base = job_configs(a.configfile, a.model, a.nfe, a.objective, a.threads)
    cfgs = {p: [replace(c, **PATHS[p]) for c in base] for p in a.paths}
    env = environment_record(torch.device("cpu"), "fp32")
    print(f"router training, {a.model} NFE {a.nfe}, {a.objective}: {len(base)} routers (lambdas "
          f"{', '.join(f'{c.lam:g}' for c in base)}), batch {base[0].batch_size}, {base[0].steps} steps in the config | "
          f"{env['device_name']} ({env['device']}) | fp32 | threads {a.threads} | torch {env['torch']} | rev {env['git_revision']}")
    warm = {p: train(c, 1)[0] for p, c in cfgs.items()}  # the first run of each path: warm-up + 1 iteration
    times: dict[str, list[float]] = {p: [] for p in a.paths}
    betas: dict[str, list[torch.Tensor]] = {}
    for _ in range(a.rounds):
        for p, c in cfgs.items():
            secs, betas[p] = train(c, a.steps)
            times[p].append(secs / a.steps)
    first = a.paths[0]
    ref = statistics.median(times[first])
    rows = {}
    print(f"{'path':18s}{'warm-up s':>11s}{'s / it':>9s}{'speedup':>9s}{'job s (proj.)':>15s}  routers equal {first}'s")
    for p in a.paths:
        per_it = statistics.median(times[p])
        warmup = max(warm[p] - per_it, 0.0)
        same = all(torch.equal(x, y) for x, y in zip(betas[p], betas[first]))
        job = warmup + base[0].steps * per_it
        rows[p] = {"warmup_s": warmup, "s_per_it": per_it, "s_per_it_all": times[p], "speedup": ref / per_it,
                   "job_s_projected": job, "bit_identical_to_baseline": same}
        print(f"{p:18s}{warmup:11.1f}{per_it:9.3f}{ref / per_it:9.2f}{job:15.0f}  {'bit for bit' if same else 'no (fp32 rounding)'}")
    if a.json:
        write_json(a.json, {"configfile": a.configfile, "model": a.model, "nfe": a.nfe, "objective": a.objective,
                            "baseline": first, "routers": [[c.objective, c.lam] for c in base], "steps_timed": a.steps, "rounds": a.rounds,
                            "config_steps": base[0].steps, "threads": a.threads, "paths": rows, "environment": env})


if __name__ == "__main__":
    main()
