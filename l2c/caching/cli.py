"""Command-line pieces of the caching methods: ``l2c calibrate`` and the ``--method`` options of
``l2c macs`` / ``l2c bench`` / ``l2c sample`` (hooked into ``l2c.cli``)."""
from __future__ import annotations

import argparse
import json
import statistics
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..io import L2CError, environment_record, write_json
from ..validate import json_object
from . import FAMILIES, build_engine, get_family, plan_macs
from .calibrate import CALIBRATIONS, calibrate, calibration_path


def add_method_args(p: argparse.ArgumentParser) -> None:
    """``--method NAME --method-params JSON --calibration FILE``."""
    g = p.add_argument_group("caching method (docs/methods.md)")
    g.add_argument("--method", help=f"a caching method: {', '.join(sorted(FAMILIES))}; or plan, to replay a "
                                    "recorded plan (--method-params '{\"plan\": FILE}')")
    g.add_argument("--method-params", dest="method_params",
                   help='JSON of the method\'s parameters, e.g. \'{"interval": 3, "order": 3}\'')
    g.add_argument("--calibration", help="calibration JSON of l2c calibrate (default: the file it writes beside the checkpoint)")


def parse_params(text: str | None) -> dict[str, Any]:
    return json_object("--method-params", text)


def resolve_calibration(method: str, calibration: str | None, checkpoint: str | None, sampler: str, nfe: int) -> str | None:
    """The calibration file a method reads: the one given, else the default beside the checkpoint."""
    if calibration or method not in CALIBRATIONS:
        return calibration
    if checkpoint:
        path = calibration_path(checkpoint, method, sampler, nfe)
        if path.exists():
            return str(path)
        raise L2CError(f"method {method} needs a calibration; none at {path}: run `l2c calibrate --method {method} "
                       f"--checkpoint {checkpoint} --sampler {sampler} --nfe {nfe}` or pass --calibration FILE")
    return None


def add_calibrate_parser(sub: Any) -> None:
    p = sub.add_parser("calibrate", help="calibration pass of a caching method (TeaCache polynomial, SmoothCache errors)")
    p.add_argument("--method", required=True, choices=CALIBRATIONS)
    p.add_argument("--checkpoint", help="model (default: the embedded digits DiT)")
    p.add_argument("--model", help="model name for official state dicts, e.g. DiT-XL/2")
    p.add_argument("--model-kwargs", dest="model_kwargs", help='JSON model options, e.g. \'{"input_size": 32}\'')
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpm2"])
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--cfg-scale", dest="cfg_scale", type=float, default=1.5)
    p.add_argument("--num-samples", dest="num_samples", type=int, default=None,
                   help="uncached calibration samples (default: 8 for teacache, 10 for smoothcache as its authors)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", help="output JSON (default: beside the checkpoint, where --method reads it)")


def run_calibrate(a: argparse.Namespace) -> Path:
    from ..generate import EMBEDDED_MODEL  # noqa: PLC0415
    from ..models import load_model  # noqa: PLC0415
    ckpt = a.checkpoint or str(EMBEDDED_MODEL)
    kwargs = json_object("--model-kwargs", a.model_kwargs)
    model = load_model(ckpt, a.model, **kwargs).to(a.device)
    out = Path(a.out) if a.out else calibration_path(ckpt, a.method, a.sampler, a.nfe)
    if out.resolve() == Path(ckpt).resolve():
        raise L2CError(f"--out {out} is the checkpoint itself; choose another file")
    calibrate(model, a.method, out, nfe=a.nfe, sampler=a.sampler, cfg_scale=a.cfg_scale, num_samples=a.num_samples,
              seed=a.seed, checkpoint=ckpt)
    print(out)
    return out


def method_macs(a: argparse.Namespace, model: nn.Module) -> dict[str, Any]:
    """``l2c macs --method``: MACs per image of a static method's plan (no weights needed)."""
    fam = FAMILIES.get(a.method)
    if fam is not None and fam.name in ("teacache", "fbcache", "dbcache"):
        raise L2CError(f"method {a.method} decides at run time: its MACs depend on the decisions a run takes; "
                       "use `l2c bench --method` (which records them) or replay a recorded plan with --method plan")
    calib = resolve_calibration(a.method, a.calibration, None, a.sampler, a.nfe)
    eng = build_engine(model, a.method, nfe=a.nfe, sampler=a.sampler, params=parse_params(a.method_params), calibration=calib)
    steps = plan_macs(eng.macs_table(), eng.plan)
    full = eng.macs_table().per_eval * a.nfe
    return {"nfe": a.nfe, "method": a.method, "params": eng.plan.params, "macs_per_eval_full": int(eng.macs_table().per_eval),
            "macs_per_step": steps, "macs_total": int(sum(steps)), "macs_total_full": int(full),
            "macs_ideal_speedup": float(full / sum(steps))}


def bench_method(a: argparse.Namespace) -> dict[str, Any]:
    """``l2c bench --method``: full vs method sampling, interleaved repeats, with the MACs of the
    decisions the method actually took (per image, the CFG duplicate not counted)."""
    from ..bench import DTYPES, _bench_model, _sync  # noqa: PLC0415
    from ..sampling import sample  # noqa: PLC0415
    import time  # noqa: PLC0415
    if a.threads:
        torch.set_num_threads(a.threads)
    model = _bench_model(a)
    dev = torch.device(a.device)
    model = model.to(dev).eval()
    calib = resolve_calibration(a.method, a.calibration, a.checkpoint, a.sampler, a.nfe)
    eng = build_engine(model, a.method, nfe=a.nfe, sampler=a.sampler, params=parse_params(a.method_params), calibration=calib)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(a.batch, model.in_channels, model.input_size, model.input_size, generator=g).to(dev)
    labels = torch.randint(model.num_classes, (a.batch,), generator=g).to(dev)
    autocast = torch.autocast(dev.type, dtype=DTYPES[a.dtype]) if a.dtype != "fp32" else nullcontext()

    def timed(engine: Any) -> float:
        _sync(dev)
        t0 = time.perf_counter()
        with autocast:
            sample(model, noise, labels, sampler=a.sampler, nfe=a.nfe, cfg_scale=a.cfg_scale, engine=engine)
        _sync(dev)
        return time.perf_counter() - t0

    for _ in range(a.warmup):
        timed(None)
        timed(eng)
    full, cached = [], []
    for _ in range(a.repeats):
        full.append(timed(None))
        cached.append(timed(eng))
    steps = eng.macs_per_step()
    per_eval = eng.macs_table().per_eval
    t_full, t_cached = statistics.median(full), statistics.median(cached)
    res = {"method": a.method, "params": eng.plan.params, "nfe": a.nfe, "sampler": a.sampler, "batch": a.batch,
           "cfg_scale": a.cfg_scale, "repeats": a.repeats, "warmup": a.warmup,
           "latency_full_s": t_full, "latency_cached_s": t_cached, "latency_full_all_s": full, "latency_cached_all_s": cached,
           "speedup_measured": t_full / t_cached, "macs_per_step": steps, "macs_total": int(sum(steps)),
           "macs_total_full": int(per_eval * a.nfe), "speedup_macs_ideal": per_eval * a.nfe / sum(steps),
           "recorded_plan": eng.recorded_plan().to_dict(), "environment": environment_record(dev, a.dtype)}
    res["efficiency"] = res["speedup_measured"] / res["speedup_macs_ideal"]
    env = res["environment"]
    print(f"model {a.model or a.checkpoint} | {env['device_name']} ({env['device']}) | {a.dtype} | torch {env['torch']} "
          f"| threads {env['num_threads']} | rev {env['git_revision']}")
    print(f"sampler {a.sampler} NFE {a.nfe}, batch {a.batch}, CFG {a.cfg_scale}; method {a.method} {json.dumps(eng.plan.params)}")
    print(f"{'':10s}{'latency (s)':>14s}{'speedup':>10s}")
    print(f"{'full':10s}{t_full:14.4f}{1.0:10.3f}")
    print(f"{a.method:10s}{t_cached:14.4f}{res['speedup_measured']:10.3f}")
    print(f"MACs-ideal speedup {res['speedup_macs_ideal']:.3f}x (decisions of the last timed run) | "
          f"measured / ideal = {res['efficiency']:.3f}")
    if a.json:
        write_json(a.json, res)
    return res


def describe() -> str:
    """One line per registered method (``l2c calibrate --help`` epilog, docs)."""
    return "\n".join(f"{n}: {get_family(n).summary}" for n in sorted(FAMILIES))


def macs_cli(a: argparse.Namespace) -> dict[str, Any]:
    """``l2c macs --method``: the model built on the meta device (no memory, no weights), as ``l2c macs``."""
    from ..macs import model_input_size  # noqa: PLC0415
    from ..models import create_model  # noqa: PLC0415
    opts = {"input_size": model_input_size(a.image_size, not a.pixel), "num_classes": a.num_classes}
    if a.in_channels is not None:
        opts["in_channels"] = a.in_channels
    with torch.device("meta"):
        model = create_model(a.model, **opts)
    rep = method_macs(a, model)
    rep.update({"model": a.model, "image_size": a.image_size, "sampler": a.sampler})
    if a.json:
        print(json.dumps(rep, indent=2, sort_keys=True, default=str))
    else:
        print(f"{a.model} {a.image_size}px {a.sampler} NFE {a.nfe}, {a.method} {json.dumps(rep['params'])}: "
              f"{rep['macs_total'] / 1e12:.4f} T MACs per image (full {rep['macs_total_full'] / 1e12:.4f} T); "
              f"MACs-ideal speedup {rep['macs_ideal_speedup']:.3f}x")
    return rep


def method_engine(cfg: Any, model: nn.Module, schedule: Any = None):
    """The engine of a ``SampleConfig`` naming a caching method (``l2c sample --method``)."""
    if schedule is not None:
        raise L2CError(f"sample options give both a cache schedule/router and --method {cfg.method}: choose one")
    params = cfg.method_params
    if isinstance(params, str):
        params = parse_params(params)
    if not isinstance(params, dict):
        raise L2CError(f"method_params must be a mapping of parameter names to values, got {params!r}")
    calib = resolve_calibration(cfg.method, cfg.calibration, cfg.checkpoint, cfg.sampler, cfg.nfe)
    return build_engine(model, cfg.method, nfe=cfg.nfe, sampler=cfg.sampler, params=params, calibration=calib,
                        compile=cfg.compile)
