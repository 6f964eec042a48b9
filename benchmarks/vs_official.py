#!/usr/bin/env python
"""Sampling latency of l2c-suite against the authors' code, on equal terms, in one run.

Same weights, same noise and labels, same schedule, same batch, same threads, same device; the two
sides are timed alternately (interleaved repeats, so machine drift hits both alike), and their
samples are compared so the timing is known to be of the same computation.

  uncached  facebookresearch/DiT ``models.py`` + ``diffusion.create_diffusion(str(NFE)).ddim_sample_loop``
            on ``forward_with_cfg`` vs ``l2c.sampling.sample(..., sampler="ddim", cfg_channels=3)``;
  l2c       the Learning-to-Cache inference path (learning-to-cache ``DiT/models/dynamic_models.py``:
            ``load_ranking`` and the same DDIM loop, as their ``sample.py --accelerate-method dynamiclayer
            --ddim-sample`` runs it) vs our ``CacheEngine`` with the same schedule.

Cases: ``xl``: DiT-XL/2 width and depth with random weights on a small latent (``--xl-latent``,
default 8x8: 16 tokens keeps a CPU run short) and the released NFE-20 router at theta 0.1;
``embedded``: the committed digits DiT with its trained weights and the workflow's L2C schedule
(``results/dit-digits/nfe20/schedules/l2c-lam0.0001-th0.1.json``). Either schedule is installed in the authors' model as
the static plan its ``load_ranking`` would build. ``--compile`` also times our compiled path (warm-up
excluded, printed). Printed: median seconds per sampling run and the ratio official / ours (> 1: ours
is faster), with device, threads, dtype, versions and revisions; ``--json`` writes every number.

Getting the authors' code: see ``benchmarks/official_conformance.py`` (same checkouts, same timm).

    PYTHONPATH=/path/to/timm-dir python benchmarks/vs_official.py --dit-repo /path/to/DiT \
        --l2c-repo /path/to/learning-to-cache --threads 1 --batch 8 --repeats 3 --compile
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from official_conformance import (CFG_SCALE, compare, official_imports, randomise_, repo_revision,  # noqa: E402
                                  set_timm_attention, timm_info)

from l2c.cache import CacheEngine, CacheSchedule  # noqa: E402
from l2c.generate import EMBEDDED_DIR  # noqa: E402
from l2c.io import environment_record, write_json  # noqa: E402
from l2c.models import create_model, load_model  # noqa: E402
from l2c.sampling import sample  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EMBEDDED_SCHEDULE = REPO / "results" / "dit-digits" / "nfe20" / "schedules" / "l2c-lam0.0001-th0.1.json"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def dit_kwargs(model: torch.nn.Module) -> dict:
    """Constructor arguments of the official DiT class that rebuild ``model`` (our DiT)."""
    return dict(input_size=model.input_size, patch_size=model.patch_size, in_channels=model.in_channels,
                hidden_size=model.hidden_size, depth=len(model.blocks), num_heads=model.num_heads,
                num_classes=model.num_classes, learn_sigma=model.learn_sigma)


def install_plan(theirs: torch.nn.Module, schedule: CacheSchedule, timestep_map) -> None:
    """Give the authors' dynamic DiT the static plan of ``schedule`` in their own representation:
    ``rank[i]`` (router index i = NFE-1-k for sampling step k) lists the flat sub-layer indices
    (2*block + branch) computed at a cache step; non-cache steps recompute everything."""
    nfe, flat = schedule.nfe, schedule.flat()
    theirs.rank = [None] * nfe
    for k in schedule.cache_steps:
        theirs.rank[nfe - 1 - k] = torch.from_numpy(np.nonzero(flat[k])[0])
    theirs.timestep_map = {int(t): i for i, t in enumerate(timestep_map)}


def build_case(name: str, args) -> tuple[torch.nn.Module, CacheSchedule, dict]:
    if name == "xl":
        ours = create_model("DiT-XL/2", input_size=args.xl_latent)
        randomise_(ours, args.seed)
        router = args.router or args.l2c_repo / "DiT" / "ckpt" / "DDIM20_router.pt"
        schedule = CacheSchedule.from_official_router(router, theta=0.1)
        return ours.eval(), schedule, {"router": str(router), "theta": 0.1}
    ours = load_model(EMBEDDED_DIR / "dit-digits.pt").eval()
    return ours, CacheSchedule.load(EMBEDDED_SCHEDULE), {"schedule": str(EMBEDDED_SCHEDULE.relative_to(REPO))}


def run_case(name: str, args) -> dict:
    ours, schedule, info = build_case(name, args)
    dev = torch.device(args.device)
    nfe = schedule.nfe
    g = torch.Generator().manual_seed(args.seed + 1)
    n = args.batch
    z = torch.randn(n, ours.in_channels, ours.input_size, ours.input_size, generator=g).to(dev)
    y = torch.randint(0, ours.num_classes, (n,), generator=g).to(dev)
    z2, y2 = torch.cat([z, z]), torch.cat([y, torch.full_like(y, ours.num_classes)])
    sd = ours.state_dict()
    ours.to(dev)
    with official_imports(args.dit_repo):
        from diffusion import create_diffusion
        from models import DiT as DiTBase
        diff = create_diffusion(str(nfe))
        base = DiTBase(**dit_kwargs(ours))
        base.load_state_dict(sd, strict=True)
        base.to(dev).eval()
        set_timm_attention(base, args.timm_attention)
    with official_imports(args.l2c_repo / "DiT"):
        from models.dynamic_models import DiT as DiTDynamic
        dyn = DiTDynamic(**dit_kwargs(ours))
        dyn.load_state_dict(sd, strict=True)
        dyn.to(dev).eval()
        set_timm_attention(dyn, args.timm_attention)
        install_plan(dyn, schedule, diff.timestep_map)

    def official(model, dynamic: bool):
        def run():
            if dynamic:
                model.reset(nfe)
            with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
                return diff.ddim_sample_loop(model.forward_with_cfg, z2.shape, z2, clip_denoised=False,
                                             model_kwargs=dict(y=y2, cfg_scale=CFG_SCALE), progress=False,
                                             device=z2.device)[:n]
        return run

    def mine(sched, engine=None):
        return lambda: sample(ours, z, y, sampler="ddim", nfe=nfe, cfg_scale=CFG_SCALE, cfg_channels=3,
                              schedule=sched, engine=engine)

    runs = {"official_uncached": official(base, False), "ours_uncached": mine(None),
            "official_l2c": official(dyn, True), "ours_l2c": mine(schedule)}
    compile_warmup = {}
    if args.compile:
        for key, sched in (("ours_compiled_uncached", None), ("ours_compiled_l2c", schedule)):
            eng = CacheEngine(ours, sched, compile=True)
            runs[key] = mine(sched, eng)
            t0 = time.perf_counter()
            runs[key]()
            compile_warmup[key] = time.perf_counter() - t0
    outputs = {k: fn() for k, fn in runs.items()}  # warm-up (and the outputs compared below)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, fn in runs.items():
            sync(dev)
            t0 = time.perf_counter()
            fn()
            sync(dev)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    agree = {"uncached": compare(outputs["ours_uncached"], outputs["official_uncached"])["max_rel"],
             "l2c": compare(outputs["ours_l2c"], outputs["official_l2c"])["max_rel"]}
    ratios = {"uncached_eager": med["official_uncached"] / med["ours_uncached"],
              "l2c_eager": med["official_l2c"] / med["ours_l2c"]}
    if args.compile:
        ratios["uncached_compiled"] = med["official_uncached"] / med["ours_compiled_uncached"]
        ratios["l2c_compiled"] = med["official_l2c"] / med["ours_compiled_l2c"]
    return {"case": name, "nfe": nfe, "batch": n, "cfg_scale": CFG_SCALE, **info, "median_s": med, "all_s": times,
            "ratio_official_over_ours": ratios, "max_rel_diff": agree, "compile_warmup_s": compile_warmup}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dit-repo", type=Path, required=True, help="checkout of github.com/facebookresearch/DiT")
    p.add_argument("--l2c-repo", type=Path, required=True, help="checkout of github.com/horseee/learning-to-cache")
    p.add_argument("--cases", default="xl,embedded", help="comma-separated subset of xl,embedded")
    p.add_argument("--router", type=Path, help="official NFE-20 router (default <l2c-repo>/DiT/ckpt/DDIM20_router.pt)")
    p.add_argument("--xl-latent", type=int, default=8, help="latent size of the DiT-XL/2 case (official: 32)")
    p.add_argument("--batch", type=int, default=8, help="images (the CFG batch is twice this; the paper's latency batch: 8)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="also time our compiled path (CacheEngine(compile=True))")
    p.add_argument("--timm-attention", choices=("default", "fused", "explicit"), default="default")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment_record(args.device, "fp32")
    env.update(timm_info())
    env["dit_repo_revision"], env["l2c_repo_revision"] = repo_revision(args.dit_repo), repo_revision(args.l2c_repo)
    print(f"{env['device_name']} ({env['device']}) | threads {env['num_threads']} | fp32 | torch {env['torch']} | timm {env.get('timm')} | "
          f"rev {env['git_revision']} | DiT {env['dit_repo_revision'][:7]} | L2C {env['l2c_repo_revision'][:7]}")
    rows = []
    for case in args.cases.split(","):
        r = run_case(case.strip(), args)
        rows.append(r)
        m, q = r["median_s"], r["ratio_official_over_ours"]
        print(f"\n{case}: NFE {r['nfe']}, batch {r['batch']} (x2 CFG), {args.repeats} interleaved repeats, median s")
        print(f"{'':10s}{'official':>10s}{'ours':>10s}{'ratio':>8s}" + (f"{'compiled':>10s}{'ratio':>8s}" if args.compile else "")
              + f"{'max rel diff':>14s}")
        for kind in ("uncached", "l2c"):
            line = f"{kind:10s}{m['official_' + kind]:10.3f}{m['ours_' + kind]:10.3f}{q[kind + '_eager']:8.2f}"
            if args.compile:
                line += f"{m['ours_compiled_' + kind]:10.3f}{q[kind + '_compiled']:8.2f}"
            print(line + f"{r['max_rel_diff'][kind]:14.2e}")
        if r["compile_warmup_s"]:
            print("compile warm-up (s, not in the medians): " + ", ".join(f"{k} {v:.1f}" for k, v in r["compile_warmup_s"].items()))
    if args.json:
        write_json(args.json, {"environment": env, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
