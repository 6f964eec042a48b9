#!/usr/bin/env python
"""Numerical conformance of l2c-suite against the official implementations.

Four checks, all in fp32 with random weights (no checkpoint needed):

  forward  our DiT (``l2c.models.create_model``) vs facebookresearch/DiT ``models.py`` given the same
           state dict (ours loaded into theirs with ``strict=True``), DiT-S/2 and DiT-XL/2, latent 32x32.
           DiT's own init zeroes adaLN and the output layer (outputs would be trivially zero), so every
           trainable parameter is redrawn N(0, 0.02^2). ``pos_embed`` keeps our fixed sin-cos values and
           is separately compared with the official ``initialize_weights`` result ("pos_embed init").
  ddim     ``l2c.sampling.sample(..., sampler="ddim", nfe=N, cfg_scale=1.5, cfg_channels=3)`` vs the
           official ``create_diffusion(str(N)).ddim_sample_loop(model.forward_with_cfg, ...)`` on
           ``cat([z, z])`` with labels ``cat([y, null])`` (first half compared), DiT-S/2, N in {20, 7}.
  l2c      our cached sampling with ``CacheSchedule.from_official_router(ROUTER, theta)`` vs the
           authors' Learning-to-Cache inference path (learning-to-cache ``DiT/models/dynamic_models.py``
           ``DiT.load_ranking`` + ``DiT/diffusion`` ``ddim_sample_loop`` on ``forward_with_cfg``, as their
           ``DiT/sample.py --accelerate-method dynamiclayer --ddim-sample`` runs it), DiT-XL/2, NFE 20,
           theta 0.1, CFG 1.5. Besides the samples, the sub-layers actually executed at every model
           evaluation are recorded on both sides (forward hooks on each block's ``attn`` / ``mlp``) and
           must agree exactly; the distance between our cached and our uncached samples is reported to
           show that the comparison is discriminating.
  taylorseer  our TaylorSeer sampling (``l2c.caching.build_engine(model, "taylorseer", nfe=N,
           params={"interval": I, "order": O})`` through ``l2c.sampling.sample``) vs the authors'
           TaylorSeer-DiT code (Shenyi-Z/TaylorSeer ``TaylorSeer-DiT/models.py`` + its ``diffusion``
           ``ddim_sample_loop`` on ``forward_with_cfg`` with ``interval`` / ``max_order`` in the model
           kwargs, as their ``sample.py --ddim-sample`` runs it), same weights, DDIM-N, CFG 1.5
           (3 channels); default DiT-XL/2, N = 50, I = 4, O = 4 (their sample.py defaults). The
           executed attention / MLP sub-modules of every evaluation must agree, as for l2c, and the
           distance to our uncached sample is reported.

Error measures (per compared tensor): ``max_abs`` = max |ours - ref|; ``max_rel`` = max_abs / max |ref|
(relative to the output scale; elementwise relative errors are meaningless near zeros). Tolerance:
``max_rel <= 1e-4`` for every check (fp32 rounding level: the two sides run the same operations, and
are usually bit-identical); the l2c check also requires identical executed sub-layer masks.

Getting the official code (it is never copied into this project; it is imported from your own
checkouts at run time by putting them on ``sys.path``):

    git clone https://github.com/facebookresearch/DiT              /path/to/DiT                # tested at ed81ce2
    git clone https://github.com/horseee/learning-to-cache         /path/to/learning-to-cache  # tested at d6cc781
    git clone https://github.com/Shenyi-Z/TaylorSeer                /path/to/TaylorSeer         # tested at 288776d
    pip install timm   # their model files import timm's PatchEmbed / Attention / Mlp; timm is NOT an
                       # l2c-suite dependency: use a scratch venv or `pip install --target DIR timm --no-deps`
                       # plus PYTHONPATH=DIR (tested with timm 1.0.31)

Run (CPU is fine; DiT-XL/2 on 2 cores takes several minutes per sampling run):

    python benchmarks/official_conformance.py --dit-repo /path/to/DiT \
        --l2c-repo /path/to/learning-to-cache --checks forward,ddim,l2c --json results/official_conformance.json

    python benchmarks/official_conformance.py --taylorseer-repo /path/to/TaylorSeer --checks taylorseer \
        --json results/official_conformance_taylorseer.json   # add --taylorseer-model DiT-S/2 for a quick run

The default ``--checks`` are forward,ddim,l2c; taylorseer runs when named. The router defaults to ``<l2c-repo>/DiT/ckpt/DDIM20_router.pt`` (the authors' released file, identical to
``shared/reference/official-routers/DDIM20_router.pt``); ``--router`` overrides it.

Adaptations of the official code (no file of theirs is modified):
  * their ``load_ranking`` reads the router file with PyTorch's default loader; on PyTorch >= 2.6 that refuses
    the router file (it pickles an ``argparse.Namespace``), so the call is wrapped in
    ``torch.serialization.safe_globals([argparse.Namespace])``;
  * their dynamic model counts steps itself (``reset(start_timestep=20)`` in ``__init__``); we call
    ``model.reset(nfe)`` before sampling, which is the same for NFE 20;
  * CPU instead of CUDA: their inference path has no ``.cuda()`` calls (only ``sample.py``'s device choice).
Exit status: 0 when every check passes, 1 otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from l2c.cache import CacheSchedule  # noqa: E402
from l2c.diffusion import Diffusion  # noqa: E402
from l2c.io import environment_record, write_json  # noqa: E402
from l2c.models import create_model  # noqa: E402
from l2c.sampling import sample  # noqa: E402

CHECKS = ("forward", "ddim", "l2c", "taylorseer")
TOL_REL = 1e-4
CFG_SCALE = 1.5
OFFICIAL_TOPLEVEL = ("models", "diffusion", "download", "cache_functions", "taylor_utils")  # the official repos' top-level modules


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def official_imports(root: Path):
    """Make ``root`` importable (its ``models`` / ``diffusion``) without mixing the two repositories,
    which both define top-level ``models`` and ``diffusion``; restores ``sys.modules`` on exit."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in OFFICIAL_TOPLEVEL}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k.split(".")[0] in OFFICIAL_TOPLEVEL]:
            del sys.modules[k]
        sys.modules.update(saved)


def repo_revision(path: Path) -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else "unknown (not a git checkout)"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def randomise_(model: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Redraw every trainable parameter N(0, std^2) (pos_embed, fixed sin-cos, is kept)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "pos_embed":
                continue
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.device) * std)


def compare(ours: torch.Tensor, ref: torch.Tensor) -> dict:
    ours, ref = ours.detach().cpu(), ref.detach().cpu()
    if ours.shape != ref.shape:
        return {"shape_ours": list(ours.shape), "shape_ref": list(ref.shape), "max_abs": float("inf"),
                "max_rel": float("inf"), "ref_scale": float("nan"), "bitwise_equal": False}
    d = (ours.double() - ref.double()).abs()
    scale = ref.double().abs().max().item()
    return {"max_abs": d.max().item(), "ref_scale": scale, "max_rel": d.max().item() / max(scale, 1e-30),
            "mean_abs": d.mean().item(), "bitwise_equal": bool(torch.equal(ours, ref)), "shape": list(ours.shape)}


def set_timm_attention(model: torch.nn.Module, mode: str) -> None:
    """'fused' / 'explicit' forces timm Attention's path (timm < 0.9, which DiT was written against,
    always used the explicit softmax); 'default' leaves timm's own choice."""
    if mode == "default":
        return
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = mode == "fused"


def timm_info() -> dict:
    try:
        import timm
        from timm.layers import use_fused_attn
        return {"timm": timm.__version__, "timm_fused_attn_default": bool(use_fused_attn())}
    except ImportError:
        return {"timm": None}


class ExecRecorder:
    """Records, per model evaluation, which attention / MLP sub-modules ran (forward hooks).
    An evaluation starts at the patch embedder, which every evaluation runs exactly once."""

    def __init__(self, model: torch.nn.Module):
        self.depth = len(model.blocks)
        self.masks: list[np.ndarray] = []
        self.handles = [model.x_embedder.register_forward_pre_hook(self._new_eval)]
        for b, block in enumerate(model.blocks):
            for s, mod in enumerate((block.attn, block.mlp)):
                self.handles.append(mod.register_forward_hook(self._ran(b, s)))

    def _new_eval(self, *_):
        self.masks.append(np.zeros((self.depth, 2), bool))

    def _ran(self, b, s):
        def hook(*_):
            self.masks[-1][b, s] = True
        return hook

    def remove(self) -> np.ndarray:
        for h in self.handles:
            h.remove()
        return np.stack(self.masks) if self.masks else np.zeros((0, self.depth, 2), bool)


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------

def check_forward(args, device) -> list[dict]:
    rows = []
    with official_imports(args.dit_repo):
        import models as official  # facebookresearch/DiT models.py
        for name in ("DiT-S/2", "DiT-XL/2"):
            torch.manual_seed(args.seed)
            ours = create_model(name, input_size=32).to(device).eval()
            theirs = official.DiT_models[name](input_size=32).to(device).eval()
            pos = compare(ours.pos_embed, theirs.pos_embed)
            randomise_(ours, args.seed)
            theirs.load_state_dict(ours.state_dict(), strict=True)
            set_timm_attention(theirs, args.timm_attention)
            g = torch.Generator().manual_seed(args.seed + 1)
            B = 4
            x = torch.randn(B, 4, 32, 32, generator=g).to(device)
            t = torch.tensor([999, 500, 37, 0], dtype=torch.long, device=device)
            y = torch.tensor([207, 1000, 0, 999], dtype=torch.long, device=device)  # includes the null label
            with torch.no_grad():
                t0 = time.perf_counter()
                a = ours(x, t, y)
                b = theirs(x, t, y)
                dt = time.perf_counter() - t0
            r = compare(a, b)
            rows.append({"check": "forward", "case": f"{name} B={B}", **r, "tol_rel": TOL_REL,
                         "pass": r["max_rel"] <= TOL_REL, "seconds": dt})
            rows.append({"check": "forward", "case": f"{name} pos_embed init", **pos, "tol_rel": TOL_REL,
                         "pass": pos["max_rel"] <= TOL_REL})
            del ours, theirs
    return rows


def check_ddim(args, device) -> list[dict]:
    rows = []
    with official_imports(args.dit_repo):
        import models as official
        from diffusion import create_diffusion
        torch.manual_seed(args.seed)
        ours = create_model("DiT-S/2", input_size=32).to(device).eval()
        randomise_(ours, args.seed)
        theirs = official.DiT_models["DiT-S/2"](input_size=32).to(device).eval()
        theirs.load_state_dict(ours.state_dict(), strict=True)
        set_timm_attention(theirs, args.timm_attention)
        g = torch.Generator().manual_seed(args.seed + 2)
        n = args.ddim_batch
        z = torch.randn(n, 4, 32, 32, generator=g).to(device)
        y = torch.randint(0, 1000, (n,), generator=g).to(device)
        for nfe in args.ddim_nfe:
            diff = create_diffusion(str(nfe))
            ours_diff = Diffusion.create(nfe)
            same_map = list(diff.timestep_map) == ours_diff.timestep_map.tolist()
            beta_err = float(np.abs(np.asarray(diff.betas) - ours_diff.betas).max())
            t0 = time.perf_counter()
            with torch.no_grad():
                z2 = torch.cat([z, z])
                y2 = torch.cat([y, torch.full_like(y, 1000)])
                ref = diff.ddim_sample_loop(theirs.forward_with_cfg, z2.shape, z2, clip_denoised=False,
                                            model_kwargs=dict(y=y2, cfg_scale=CFG_SCALE), progress=False, device=device)
                ref = ref[:n]
            t1 = time.perf_counter()
            mine = sample(ours, z, y, sampler="ddim", nfe=nfe, cfg_scale=CFG_SCALE, cfg_channels=3)
            t2 = time.perf_counter()
            r = compare(mine, ref)
            ok = r["max_rel"] <= TOL_REL and same_map
            rows.append({"check": "ddim", "case": f"DiT-S/2 NFE={nfe} N={n}", **r, "tol_rel": TOL_REL, "pass": ok,
                         "timestep_map_equal": same_map, "betas_max_abs": beta_err,
                         "seconds_official": t1 - t0, "seconds_ours": t2 - t1})
        del ours, theirs
    return rows


def check_l2c(args, device) -> list[dict]:
    router = args.router or args.l2c_repo / "DiT" / "ckpt" / "DDIM20_router.pt"
    schedule = CacheSchedule.from_official_router(router, theta=args.theta)
    nfe = schedule.nfe
    torch.manual_seed(args.seed)
    ours = create_model("DiT-XL/2", input_size=32).to(device).eval()
    randomise_(ours, args.seed)
    sd = ours.state_dict()
    g = torch.Generator().manual_seed(args.seed + 3)
    n = args.l2c_batch
    z = torch.randn(n, 4, 32, 32, generator=g).to(device)
    y = torch.randint(0, 1000, (n,), generator=g).to(device)

    code_root = args.l2c_repo / "DiT"
    with official_imports(code_root):
        from models.dynamic_models import DiT_models as dyn_models
        from diffusion import create_diffusion
        diff = create_diffusion(str(nfe))
        theirs = dyn_models["DiT-XL/2"](input_size=32, num_classes=1000)
        log = io.StringIO()
        with contextlib.redirect_stdout(log), torch.serialization.safe_globals([argparse.Namespace]):
            theirs.load_ranking(str(router), nfe, diff.timestep_map, args.theta)
        theirs.load_state_dict(sd, strict=True)
        theirs = theirs.to(device).eval()
        set_timm_attention(theirs, args.timm_attention)
        theirs.reset(nfe)
        rec = ExecRecorder(theirs)
        t0 = time.perf_counter()
        with torch.no_grad():
            z2 = torch.cat([z, z])
            y2 = torch.cat([y, torch.full_like(y, 1000)])
            ref = diff.ddim_sample_loop(theirs.forward_with_cfg, z2.shape, z2, clip_denoised=False,
                                        model_kwargs=dict(y=y2, cfg_scale=CFG_SCALE), progress=False, device=device)[:n]
        t_off = time.perf_counter() - t0
        their_exec = rec.remove()
        # The official static plan, as load_ranking built it: at cache steps (even router index i,
        # sampling order k = NFE-1-i) the sub-layers listed in rank[i] are computed.
        plan = np.ones((nfe, len(theirs.blocks) * 2), bool)
        for i, rank in enumerate(theirs.rank):
            if rank is not None:
                plan[nfe - 1 - i] = False
                plan[nfe - 1 - i, rank.reshape(-1).tolist()] = True
        del theirs

    rec = ExecRecorder(ours)
    t0 = time.perf_counter()
    mine = sample(ours, z, y, sampler="ddim", nfe=nfe, cfg_scale=CFG_SCALE, cfg_channels=3, schedule=schedule)
    t_ours = time.perf_counter() - t0
    our_exec = rec.remove()
    full = sample(ours, z, y, sampler="ddim", nfe=nfe, cfg_scale=CFG_SCALE, cfg_channels=3) if args.effect_baseline else None

    r = compare(mine, ref)
    ours_plan = schedule.flat()
    plan_equal = bool(np.array_equal(plan, ours_plan))
    exec_equal = bool(their_exec.shape == our_exec.shape and np.array_equal(their_exec, our_exec))
    exec_diff_steps = [] if exec_equal or their_exec.shape != our_exec.shape else \
        [int(k) for k in np.nonzero((their_exec != our_exec).any(axis=(1, 2)))[0]]
    row = {"check": "l2c", "case": f"DiT-XL/2 NFE={nfe} theta={args.theta} N={n}", **r, "tol_rel": TOL_REL,
           "pass": r["max_rel"] <= TOL_REL and plan_equal and exec_equal,
           "router": str(router), "schedule_equal_official_plan": plan_equal, "executed_masks_equal": exec_equal,
           "executed_mask_diff_steps": exec_diff_steps, "evaluations_official": int(their_exec.shape[0]),
           "evaluations_ours": int(our_exec.shape[0]),
           "sublayers_executed_official": int(their_exec.sum()), "sublayers_executed_ours": int(our_exec.sum()),
           "sublayers_total": int(nfe * ours_plan.shape[1]), "cache_steps": schedule.cache_steps,
           **schedule.remove_ratio(), "official_load_ranking_log_tail": log.getvalue().strip().splitlines()[-3:],
           "seconds_official": t_off, "seconds_ours": t_ours}
    if full is not None:
        eff = compare(mine, full)
        row["cache_effect_max_abs"] = eff["max_abs"]  # |cached - uncached|: shows the check discriminates
        row["cache_effect_max_rel"] = eff["max_rel"]
    return [row]


def check_taylorseer(args, device) -> list[dict]:
    from l2c.caching import build_engine  # noqa: PLC0415
    nfe, interval, order, name = args.taylorseer_nfe, args.taylorseer_interval, args.taylorseer_order, args.taylorseer_model
    torch.manual_seed(args.seed)
    ours = create_model(name, input_size=32).to(device).eval()
    randomise_(ours, args.seed)
    sd = ours.state_dict()
    g = torch.Generator().manual_seed(args.seed + 5)
    n = args.l2c_batch
    z = torch.randn(n, 4, 32, 32, generator=g).to(device)
    y = torch.randint(0, 1000, (n,), generator=g).to(device)

    with official_imports(args.taylorseer_repo / "TaylorSeer-DiT"):
        from models import DiT_models as ts_models
        from diffusion import create_diffusion
        diff = create_diffusion(str(nfe))
        theirs = ts_models[name](input_size=32, num_classes=1000)
        theirs.load_state_dict(sd, strict=True)
        theirs = theirs.to(device).eval()
        set_timm_attention(theirs, args.timm_attention)
        rec = ExecRecorder(theirs)
        t0 = time.perf_counter()
        with torch.no_grad():
            z2, y2 = torch.cat([z, z]), torch.cat([y, torch.full_like(y, 1000)])
            kw = dict(y=y2, cfg_scale=CFG_SCALE, interval=interval, max_order=order, test_FLOPs=False)
            ref = diff.ddim_sample_loop(theirs.forward_with_cfg, z2.shape, z2, clip_denoised=False, model_kwargs=kw,
                                        progress=False, device=device)[:n]
        t_off = time.perf_counter() - t0
        their_exec = rec.remove()
        del theirs

    engine = build_engine(ours, "taylorseer", nfe=nfe, params={"interval": interval, "order": order})
    rec = ExecRecorder(ours)
    t0 = time.perf_counter()
    mine = sample(ours, z, y, sampler="ddim", nfe=nfe, cfg_scale=CFG_SCALE, cfg_channels=3, engine=engine)
    t_ours = time.perf_counter() - t0
    our_exec = rec.remove()
    full = sample(ours, z, y, sampler="ddim", nfe=nfe, cfg_scale=CFG_SCALE, cfg_channels=3) if args.effect_baseline else None
    r = compare(mine, ref)
    exec_equal = bool(their_exec.shape == our_exec.shape and np.array_equal(their_exec, our_exec))
    full_steps = [int(k) for k in range(our_exec.shape[0]) if our_exec[k].all()]
    row = {"check": "taylorseer", "case": f"{name} NFE={nfe} N={interval} O={order} B={n}", **r, "tol_rel": TOL_REL,
           "pass": r["max_rel"] <= TOL_REL and exec_equal, "executed_masks_equal": exec_equal,
           "full_steps_ours": full_steps, "evaluations_official": int(their_exec.shape[0]),
           "evaluations_ours": int(our_exec.shape[0]), "sublayers_executed_official": int(their_exec.sum()),
           "sublayers_executed_ours": int(our_exec.sum()), "seconds_official": t_off, "seconds_ours": t_ours}
    if full is not None:
        eff = compare(mine, full)
        row["cache_effect_max_abs"] = eff["max_abs"]
        row["cache_effect_max_rel"] = eff["max_rel"]
    return [row]


# ---------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dit-repo", type=Path, help="checkout of github.com/facebookresearch/DiT (needed by forward, ddim)")
    p.add_argument("--l2c-repo", type=Path, help="checkout of github.com/horseee/learning-to-cache (needed by l2c)")
    p.add_argument("--taylorseer-repo", type=Path, help="checkout of github.com/Shenyi-Z/TaylorSeer (needed by taylorseer)")
    p.add_argument("--taylorseer-model", default="DiT-XL/2", help="DiT size of the taylorseer check (DiT-S/2 is quick)")
    p.add_argument("--taylorseer-nfe", type=int, default=50)
    p.add_argument("--taylorseer-interval", type=int, default=4)
    p.add_argument("--taylorseer-order", type=int, default=4)
    p.add_argument("--checks", default="forward,ddim,l2c", help=f"comma-separated subset of {','.join(CHECKS)}")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--router", type=Path, help="official DiT router file (default <l2c-repo>/DiT/ckpt/DDIM20_router.pt)")
    p.add_argument("--theta", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--ddim-nfe", type=lambda s: [int(v) for v in s.split(",")], default=[20, 7])
    p.add_argument("--ddim-batch", type=int, default=2)
    p.add_argument("--l2c-batch", type=int, default=1, help="images (the CFG batch is twice this)")
    p.add_argument("--no-effect-baseline", dest="effect_baseline", action="store_false",
                   help="skip the uncached run that measures how much caching changes the sample")
    p.add_argument("--timm-attention", choices=("default", "fused", "explicit"), default="default",
                   help="timm Attention path in the official models (DiT's original timm 0.6 used 'explicit')")
    args = p.parse_args(argv)

    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    bad = [c for c in checks if c not in CHECKS]
    if bad:
        p.error(f"unknown checks {bad}: choose from {CHECKS}")
    for need, repo, flag in (({"forward", "ddim"}, args.dit_repo, "--dit-repo"), ({"l2c"}, args.l2c_repo, "--l2c-repo"),
                             ({"taylorseer"}, args.taylorseer_repo, "--taylorseer-repo")):
        if need & set(checks):
            if repo is None or not repo.is_dir():
                p.error(f"{flag} must name an existing checkout for checks {sorted(need & set(checks))}")
    if "l2c" in checks and not (args.l2c_repo / "DiT" / "models" / "dynamic_models.py").exists():
        p.error(f"{args.l2c_repo} does not look like learning-to-cache (no DiT/models/dynamic_models.py)")
    if "taylorseer" in checks and not (args.taylorseer_repo / "TaylorSeer-DiT" / "taylor_utils").is_dir():
        p.error(f"{args.taylorseer_repo} does not look like TaylorSeer (no TaylorSeer-DiT/taylor_utils)")
    if args.taylorseer_repo is not None:
        args.taylorseer_repo = args.taylorseer_repo.resolve()
    if args.dit_repo is not None:
        args.dit_repo = args.dit_repo.resolve()
    if args.l2c_repo is not None:
        args.l2c_repo = args.l2c_repo.resolve()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)

    rows: list[dict] = []
    runners = {"forward": check_forward, "ddim": check_ddim, "l2c": check_l2c, "taylorseer": check_taylorseer}
    for c in checks:
        t0 = time.perf_counter()
        try:
            rows += runners[c](args, device)
        except ModuleNotFoundError as e:
            if e.name == "timm":
                p.exit(2, "error: the official model files import timm: `pip install timm` in a scratch environment "
                          "(or `pip install --target DIR --no-deps timm` and PYTHONPATH=DIR); it is not an l2c-suite dependency\n")
            raise
        print(f"[{c}] done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    print(f"{'check':8} {'case':36} {'max_abs':>11} {'max_rel':>11} {'ref_scale':>10} {'bitwise':>7}  result")
    for r in rows:
        extra = ""
        if r["check"] in ("l2c", "taylorseer"):
            extra = f"  masks {'equal' if r['executed_masks_equal'] and r.get('schedule_equal_official_plan', True) else 'DIFFER'}"
            if "cache_effect_max_abs" in r:
                extra += f", cache effect max_abs {r['cache_effect_max_abs']:.3e}"
        print(f"{r['check']:8} {r['case']:36} {r['max_abs']:11.3e} {r['max_rel']:11.3e} {r['ref_scale']:10.3e} "
              f"{str(r['bitwise_equal']):>7}  {'PASS' if r['pass'] else 'FAIL'} (rel <= {r['tol_rel']:g}){extra}")
    ok = all(r["pass"] for r in rows)
    print("ALL PASS" if ok else "SOME CHECKS FAILED")

    if args.json:
        rec = {
            "format": "l2c-suite/official-conformance", "version": 1, "pass": ok, "seed": args.seed,
            "checks": checks, "tolerance_rel": TOL_REL, "cfg_scale": CFG_SCALE, "theta": args.theta,
            "error_measure": "max_abs = max|ours-ref|; max_rel = max_abs / max|ref|",
            "environment": environment_record(device, "float32"), **timm_info(),
            "timm_attention": args.timm_attention,
            "official": {"dit_repo": str(args.dit_repo) if args.dit_repo else None,
                         "dit_revision": repo_revision(args.dit_repo) if args.dit_repo else None,
                         "l2c_repo": str(args.l2c_repo) if args.l2c_repo else None,
                         "l2c_revision": repo_revision(args.l2c_repo) if args.l2c_repo else None,
                         "taylorseer_repo": str(args.taylorseer_repo) if args.taylorseer_repo else None,
                         "taylorseer_revision": repo_revision(args.taylorseer_repo) if args.taylorseer_repo else None},
            "results": rows,
        }
        write_json(args.json, rec)
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
