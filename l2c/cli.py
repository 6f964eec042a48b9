"""The ``l2c`` command line: one sub-command per stage, each a thin call into the package.

Two rules hold for every sub-command, checked before any work starts (``l2c.validate``): bad input
is refused with one line naming the flag, key, file or value and what is expected (exit 2); no
command writes over a file it reads (an output, its ``.json`` record or ``.shards/`` folder).
Anything else that goes wrong is reported in one line too (exit 1; ``--verbose`` shows the traceback)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from .io import L2CError
from . import validate as V

COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {}


def command(name: str):
    def deco(fn):
        COMMANDS[name] = fn
        return fn
    return deco


# -- what each command reads and writes --------------------------------------------------------------
# inputs: argument dests (or --config keys) holding a path; kinds: file, folder, any (e.g. a VAE id),
# data (a data spec: folder:PATH / latents:PATH), npz (a samples file and its .json record). outputs: dest -> how its derived files are named.
# A command not listed reads the dests in DEFAULT_INPUTS and writes --out / --json as plain files.

RUN_FILES = {"pretrain": ("checkpoint.pt", "model.pt", "train_log.jsonl", "record.json"),
             "train-router": ("checkpoint.pt", "router.pt", "router_official.pt", "train_log.jsonl", "record.json")}


def _features_outputs(label: str, path: Any) -> list:
    from .metrics.features import record_path
    return V.file_output(label, path) + (V.file_output(f"the record of {label}", record_path(path)) if path else [])


def _calibration_outputs(a: argparse.Namespace) -> list:
    if a.out:
        return V.file_output("--out", a.out)
    from .caching.calibrate import calibration_path
    from .generate import EMBEDDED_MODEL
    return V.file_output("calibration file", calibration_path(a.checkpoint or str(EMBEDDED_MODEL), a.method, a.sampler, a.nfe))


IO: dict[str, dict[str, Any]] = {
    "pretrain": {"in": {"config": "file", "data": "data"},
                 "out": lambda a: V.folder_outputs("--out", a.out, RUN_FILES["pretrain"])},
    "macs": {"in": {"router": "file", "schedule": "file", "calibration": "file"}, "out": lambda a: []},
    "sample": {"in": {"config": "file", "checkpoint": "file", "schedule": "file", "router": "file", "vae": "any",
                      "calibration": "file"},
               "out": lambda a: V.npz_outputs("--out", a.out)},
    "train-router": {"in": {"config": "file", "checkpoint": "file", "data": "data"},
                     "out": lambda a: V.folder_outputs("--out", a.out, RUN_FILES["train-router"])},
    "schedule": {"in": {"router": "file", "match": "file", "profile": "file"}},
    "profile": {"in": {"checkpoint": "file"}},
    "evaluate": {"in": {"samples": "npz", "ref": "file", "weights": "file", "paired_with": "npz"}},
    "reference": {"in": {}},
    "train-features": {"in": {}, "out": lambda a: _features_outputs("--out", a.out)},
    "embedded-report": {"in": {"checkpoint": "file"}, "out": lambda a: V.tree_output("--out", a.out)},
    "bench": {"in": {"checkpoint": "file", "router": "file", "schedule": "file", "calibration": "file"}},
    "bench-router": {"in": {"checkpoint": "file"}},
    "encode-latents": {"in": {"data": "data", "vae": "any"}, "out": lambda a: V.npz_outputs("--out", a.out)},
    "calibrate": {"in": {"checkpoint": "file"}, "out": _calibration_outputs},
    "check-config": {"in": {}, "out": lambda a: []},
}
DEFAULT_INPUTS = {"config": "file", "checkpoint": "file", "schedule": "file", "router": "file", "calibration": "file",
                  "data": "data", "vae": "any", "samples": "file", "ref": "file", "weights": "file", "match": "file",
                  "paired_with": "file"}


def _default_outputs(a: argparse.Namespace) -> list:
    return V.file_output("--out", getattr(a, "out", None)) + V.file_output("--json", _json_path(a))


def _json_path(a: argparse.Namespace) -> str | None:
    j = getattr(a, "json", None)
    return j if isinstance(j, str) else None  # macs --json is a switch


def _value(a: argparse.Namespace, key: str) -> Any:
    """A setting: its flag when given, else its --config value."""
    v = getattr(a, key, None)
    return a.config_values.get(key) if v is None else v


def _name(a: argparse.Namespace, key: str) -> str:
    """How a message names a setting: the flag when given, else the config file and key."""
    if getattr(a, key, None) is None and key in a.config_values:
        return f"{a.config}: {key}"
    return a.flags.get(key, key)


def preflight(a: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The checks every command gets before it runs: value ranges of flags and config keys, devices,
    input files, and the output rule."""
    a.flags = V.flag_names(parser)
    a.config_values = {}
    for key, v in vars(a).items():
        if key in V.RULES:
            setattr(a, key, V.check_value(a.flags.get(key, key), key, v))
    if getattr(a, "config", None):
        a.config_values = _read_yaml(a.config)
        for key, v in a.config_values.items():
            a.config_values[key] = V.check_value(f"{a.config}: {key}", key, v)
    if _value(a, "device") is not None:
        V.check_device(_name(a, "device"), str(_value(a, "device")))
    spec = IO.get(a.command, {})
    inputs = []
    for key, kind in spec.get("in", DEFAULT_INPUTS).items():
        val = _value(a, key)
        if val is None:
            continue
        if not isinstance(val, (str, Path)) or not str(val).strip():
            raise L2CError(f"{_name(a, key)} {val!r}: expected a path")
        if kind == "data":
            inputs += V.data_input(_name(a, key), val)
        elif kind == "npz":  # a samples file: its .json record is protected too
            inputs += V.inp(_name(a, key), val) + V.inp(f"the record of {_name(a, key)}", Path(val).with_suffix(".json"), "any")
        else:
            inputs += V.inp(_name(a, key), val, kind)
    for key in ("out", "json"):
        val = getattr(a, key, None)
        if isinstance(val, str) and not val.strip():
            raise L2CError(f"{a.flags.get(key, key)} {val!r}: expected a path")
    outputs = spec.get("out", _default_outputs)(a) if "out" in spec else _default_outputs(a)
    V.check_inputs_exist(inputs)
    V.check_paths(inputs, outputs)


def _read_yaml(path: str, label: str = "--config") -> dict:
    import yaml
    p = Path(path)
    label = f"{label} {path}".strip()
    if not p.is_file():
        raise L2CError(f"{label}: {'is a folder, expected a YAML file' if p.is_dir() else 'file not found'}")
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        ctx, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if ctx and cmark is not None:
            problem += f"; {ctx} from line {cmark.line + 1}"
        raise L2CError(f"{label}: not valid YAML{where} ({problem})") from None
    except UnicodeDecodeError:
        raise L2CError(f"{label}: not a text file; expected a YAML mapping of keys to values") from None
    d = {} if d is None else d
    if not isinstance(d, dict):
        raise L2CError(f"{label}: expected a mapping of keys to values, got a {type(d).__name__}")
    return d


def _settings(a: argparse.Namespace, cls: type, keys: tuple[str, ...] = ()) -> Any:
    """``cls`` (a config dataclass) from the --config values overridden by the flags in ``keys``."""
    d = dict(a.config_values)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise L2CError(f"--config {a.config}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    for key in keys:
        if getattr(a, key, None) is not None:
            d[key] = getattr(a, key)
    for key in ("model_kwargs",):
        if key in d and not isinstance(d[key], dict):
            raise L2CError(f"{_name(a, key)} {d[key]!r}: expected a mapping of option names to values")
    return cls(**d)


def _choice(a: argparse.Namespace, key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise L2CError(f"{_name(a, key)} {value!r}: expected one of {', '.join(choices)}")


def _json_arg(a: argparse.Namespace, key: str) -> dict:
    return V.json_object(a.flags[key], getattr(a, key))


def _outline(a: argparse.Namespace, checkpoint: str, name: str | None, kwargs: dict, key: str = "checkpoint"):
    """The checkpoint's model on the meta device; a model that cannot be built is named with its options."""
    try:
        return V.model_outline(checkpoint, name, **kwargs)
    except (ValueError, AssertionError) as e:
        raise L2CError(f"{_name(a, key)} {checkpoint}: the model cannot be built with options {kwargs} ({e})") from None


def _check_guidance(a: argparse.Namespace, model: Any, cfg_channels: int | None, key: str = "cfg_channels") -> None:
    if cfg_channels is not None and cfg_channels > model.in_channels:
        raise L2CError(f"{_name(a, key)} {cfg_channels}: the model predicts {model.in_channels} noise channel(s); "
                       f"expected 1..{model.in_channels}")


def _check_cache_steps(a: argparse.Namespace, nfe: int, sampler: str, key: str = "nfe") -> None:
    from .cache import default_cache_steps
    if not default_cache_steps(nfe, sampler):
        raise L2CError(f"{_name(a, key)} {nfe}: no cache steps at this NFE with {sampler} (a router needs NFE >= "
                       f"{2 if sampler == 'ddim' else 4})")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# -- commands --------------------------------------------------------------------------------------

@command("pretrain")
def cmd_pretrain(a: argparse.Namespace) -> None:
    from .models import create_model
    from .pretrain import PretrainConfig, pretrain
    cfg = _settings(a, PretrainConfig, ("steps", "batch_size", "seed", "threads"))
    for key in ("model_kwargs",):
        if not isinstance(getattr(cfg, key), dict):
            raise L2CError(f"{_name(a, key)} {getattr(cfg, key)!r}: expected a mapping of option names to values")
    import torch
    try:
        with torch.device("meta"):
            create_model(cfg.model, **cfg.model_kwargs)
    except (ValueError, AssertionError) as e:
        raise L2CError(f"{_name(a, 'model_kwargs')} {cfg.model_kwargs}: {cfg.model} cannot be built with these options ({e})") from None
    print(pretrain(cfg, a.out, progress=not a.no_progress))


@command("macs")
def cmd_macs(a: argparse.Namespace) -> None:
    V.check_nfe("--nfe", a.nfe, a.sampler)
    _check_schedule_flags(a)
    if getattr(a, "method", None):
        from .caching.cli import macs_cli
        macs_cli(a)
        return
    from .macs import macs_for
    rep = macs_for(a.model, image_size=a.image_size, sampler=a.sampler, nfe=a.nfe, router=a.router, theta=a.theta,
                   schedule=a.schedule, latent=not a.pixel, in_channels=a.in_channels, num_classes=a.num_classes)
    if a.json:
        _print_json(rep)
    else:
        print(f"{a.model} {a.image_size}px {a.sampler} NFE {a.nfe}: {rep['macs_total'] / 1e12:.3f} T MACs per image "
              f"(full {rep['macs_total_full'] / 1e12:.3f} T, {rep['macs_per_eval_full'] / 1e9:.2f} G per evaluation); "
              f"remove ratio {100 * rep['remove_ratio']:.2f}% (attn {100 * rep['remove_ratio_attn']:.2f}%, "
              f"mlp {100 * rep['remove_ratio_mlp']:.2f}%); MACs-ideal speedup {rep['macs_ideal_speedup']:.3f}x")


def _check_schedule_flags(a: argparse.Namespace, router: Any = None, schedule: Any = None, theta: Any = None,
                          names: tuple[str, str, str] = ("--router", "--schedule", "--theta")) -> None:
    """--router needs --theta; --theta needs --router; --schedule and --router exclude each other."""
    router = getattr(a, "router", None) if router is None else router
    schedule = getattr(a, "schedule", None) if schedule is None else schedule
    theta = getattr(a, "theta", None) if theta is None else theta
    if router and schedule:
        raise L2CError(f"{names[0]} and {names[1]} both given: the schedule comes from one of them; drop one")
    if router and theta is None:
        raise L2CError(f"{names[0]} {router} needs {names[2]} T (compute iff sigmoid(beta) > T; 0.1 for DiT-XL/2 256, "
                       "0.9 for U-ViT-H/2)")
    if theta is not None and not router:
        raise L2CError(f"{names[2]} {theta} is used only with {names[0]} FILE; give the router it thresholds")


@command("sample")
def cmd_sample(a: argparse.Namespace) -> None:
    from .generate import SampleConfig, generate, resolve_schedule
    keys = tuple(f.name for f in fields(SampleConfig) if f.name != "model_kwargs")
    if a.model_kwargs:
        a.model_kwargs = _json_arg(a, "model_kwargs")
    if getattr(a, "method_params", None):
        a.method_params = _json_arg(a, "method_params")
    cfg = _settings(a, SampleConfig, keys + ("model_kwargs",))
    _choice(a, "sampler", cfg.sampler, ("ddim", "dpm2"))
    _choice(a, "dtype", cfg.dtype, ("fp32", "bf16", "tf32"))
    _choice(a, "labels", cfg.labels, ("uniform", "balanced"))
    V.check_nfe(_name(a, "nfe"), cfg.nfe, cfg.sampler)
    _check_schedule_flags(a, cfg.router, cfg.schedule, cfg.theta,
                          (_name(a, "router"), _name(a, "schedule"), _name(a, "theta")))
    shards = _shards(a.shards) if a.shards else None
    model = _outline(a, cfg.checkpoint, cfg.model, cfg.model_kwargs)
    _check_guidance(a, model, cfg.cfg_channels)
    sched = resolve_schedule(cfg)
    if sched is not None:
        sched.check_nfe(cfg.nfe)
        sched.check_model(model)
        if sched.sampler.split("-")[0] != cfg.sampler:
            raise L2CError(f"{_name(a, 'schedule' if cfg.schedule else 'router')} was made for sampler {sched.sampler!r}, "
                           f"not {cfg.sampler!r}: make one for this sampler")
    res = generate(cfg, a.out, shards=shards, progress=not a.no_progress, keep_shards=a.keep_shards)
    print(res if res else f"shards {a.shards} done; run again without --shards to merge")


def _shards(text: str) -> tuple[int, int]:
    try:
        first, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise L2CError(f"--shards {text!r}: expected FIRST:STOP, two integers (e.g. 0:4)") from None
    if not 0 <= first < stop:
        raise L2CError(f"--shards {text!r}: expected 0 <= FIRST < STOP")
    return first, stop


@command("train-router")
def cmd_train_router(a: argparse.Namespace) -> None:
    from .router import OBJECTIVES, RouterConfig, train_router
    cfg = _settings(a, RouterConfig, ("checkpoint", "data", "sampler", "nfe", "lam", "objective", "steps", "batch_size",
                                      "lr", "seed", "threads", "ste_threshold", "device", "reduction", "trajectory_loss",
                                      "compile"))
    if a.no_clamp:
        cfg.clamp = None
    if not cfg.checkpoint:
        from .generate import EMBEDDED_MODEL
        cfg.checkpoint = str(EMBEDDED_MODEL)
    _choice(a, "sampler", cfg.sampler, ("ddim", "dpm2"))
    _choice(a, "objective", cfg.objective, OBJECTIVES)
    _choice(a, "reduction", cfg.reduction, ("mean", "sum"))
    _choice(a, "trajectory_loss", cfg.trajectory_loss, ("x0", "final"))
    if cfg.objective == "trajectory" and cfg.sampler != "ddim":
        raise L2CError(f"{_name(a, 'objective')} trajectory: implemented for the ddim sampler, not {cfg.sampler!r}")
    V.check_nfe(_name(a, "nfe"), cfg.nfe, cfg.sampler)
    if cfg.objective == "trajectory" and cfg.nfe < 2:
        raise L2CError(f"{_name(a, 'nfe')} {cfg.nfe}: the trajectory objective needs NFE >= 2")
    if cfg.objective != "trajectory":
        _check_cache_steps(a, cfg.nfe, cfg.sampler)
    _outline(a, cfg.checkpoint, cfg.model, cfg.model_kwargs)
    print(train_router(cfg, a.out, progress=not a.no_progress))


@command("schedule")
def cmd_schedule(a: argparse.Namespace) -> None:
    """Write a cache schedule JSON: from a router at theta, or a heuristic / interval at a budget."""
    from .baselines import deepcache_schedule, faster_diffusion_schedule, heuristic_schedule, interval_schedule
    from .cache import CacheSchedule
    from .router import load_schedule_from_router
    V.check_nfe("--nfe", a.nfe, a.sampler)
    if a.router and a.kind:
        raise L2CError(f"--router and --kind {a.kind} both given: a schedule comes from a router or a kind; drop one")
    if a.theta is not None and not a.router:
        raise L2CError(f"--theta {a.theta} is used only with --router FILE; give the router it thresholds")
    if a.budget is not None and a.match:
        raise L2CError("--budget and --match both given: the budget is a number or another schedule's; drop one")
    if a.deep_from >= a.depth:
        raise L2CError(f"--deep-from {a.deep_from}: expected a block index below --depth {a.depth}")
    if a.router:
        if a.theta is None:
            raise L2CError(f"--router {a.router} needs --theta T (compute iff sigmoid(beta) > T)")
        sched = load_schedule_from_router(a.router, a.theta, nfe=a.nfe)
    elif a.kind == "interval":
        sched = interval_schedule(a.nfe, a.depth, a.interval, a.sampler, deep_from=a.deep_from)
    elif a.kind == "deepcache":
        sched = deepcache_schedule(a.nfe, a.depth, a.shallow, a.sampler, interval=a.interval)
    elif a.kind == "faster-diffusion":
        keys = _int_list("--key-steps", a.key_steps) if a.key_steps else None
        sched = faster_diffusion_schedule(a.nfe, a.depth, a.encoder_blocks or a.depth // 2, a.sampler, key_steps=keys)
    elif a.kind == "full":
        sched = CacheSchedule.full(a.nfe, a.depth, a.sampler)
    elif a.kind:
        budget = a.budget
        if a.match:
            budget = CacheSchedule.load(a.match).num_reused
        if budget is None:
            raise L2CError(f"--kind {a.kind} needs --budget N or --match SCHEDULE.json")
        profile = None
        if a.kind == "metrics":
            from .profile import profile_matrix, read_profile
            profile = profile_matrix(read_profile(a.profile)) if a.profile else None
        sched = heuristic_schedule(a.kind, budget, a.nfe, a.depth, a.sampler, seed=a.seed, profile=profile)
    else:
        raise L2CError("give --router FILE --theta T, or --kind")
    sched.save(a.out)
    r = sched.remove_ratio()
    print(f"{a.out}: {sched.source}, {sched.num_reused} sub-layers reused, remove ratio {100 * r['remove_ratio']:.2f}%")


def _int_list(flag: str, text: str) -> list[int]:
    try:
        return [int(k) for k in text.split(",")]
    except ValueError:
        raise L2CError(f"{flag} {text!r}: expected comma-separated integers, e.g. 0,1,2,4") from None


@command("profile")
def cmd_profile(a: argparse.Namespace) -> None:
    import numpy as np
    from .generate import EMBEDDED_MODEL, noise_and_labels
    from .models import load_model
    from .profile import profile_redundancy, write_profile
    V.check_nfe("--nfe", a.nfe, a.sampler)
    ckpt = a.checkpoint or str(EMBEDDED_MODEL)
    _check_guidance(a, _outline(a, ckpt, a.model, {}), a.cfg_channels)
    model = load_model(ckpt, a.model)
    noise, labels = noise_and_labels(a.seed, np.arange(a.num_samples), (model.in_channels, model.input_size, model.input_size), model.num_classes)
    df = profile_redundancy(model, noise, labels, nfe=a.nfe, sampler=a.sampler, cfg_scale=a.cfg_scale, cfg_channels=a.cfg_channels)
    write_profile(df, a.out)
    print(a.out)


@command("evaluate")
def cmd_evaluate(a: argparse.Namespace) -> None:
    from .metrics.evaluate import evaluate, write_evaluation
    res = evaluate(a.samples, a.ref, backend=a.backend, weights=a.weights, batch_size=a.batch_size, device=a.device,
                   paired_with=a.paired_with, kid=not a.no_kid, allow_download=a.allow_download, cleanfid=a.cleanfid,
                   feature_cache=a.feature_cache)
    if a.out:
        write_evaluation(res, a.out)
    keys = ("inception_score", "fid", "sfid", "precision", "recall", "kid_mean")
    print(f"{a.samples} [{res['backend']}: {res.get('feature_extractor', '')}] " + " ".join(
        f"{k}={res[k]:.4g}" for k in keys if res.get(k) is not None) +
        (f" psnr={res['paired']['psnr_db']:.2f}dB mse={res['paired']['mse_mean']:.3g}" if "paired" in res else ""))


@command("reference")
def cmd_reference(a: argparse.Namespace) -> None:
    from .data import digits_reference_npz
    digits_reference_npz(a.out)
    print(a.out)


@command("train-features")
def cmd_train_features(a: argparse.Namespace) -> None:
    from .metrics.features import train_digit_features
    print(train_digit_features(a.out, seed=a.seed))


@command("embedded-report")
def cmd_embedded_report(a: argparse.Namespace) -> None:
    from .embedded import embedded_report
    from .generate import EMBEDDED_MODEL
    ckpt = a.checkpoint or str(EMBEDDED_MODEL)
    _outline(a, ckpt, None, {})
    rep = embedded_report(a.out, ckpt, n_main=a.n_main, n_cache=a.n_cache,
                          seeds=tuple(a.seeds), cfg_scale=a.cfg_scale, sampler=a.sampler, progress=not a.no_progress)
    main = "ddim50" if a.sampler == "ddim" else "dpm50"
    _print_json({k: rep[k] for k in ("floor_train_vs_reference", main, "caching_sensitivity_summary", "sampling_wall_s_1000_nfe20_cfg")})


@command("check-config")
def cmd_check_config(a: argparse.Namespace) -> None:
    """A workflow config checked as ``snakemake --configfile FILE...`` would read it (later files
    overlay earlier ones), with the YAML line of a syntax error, which snakemake does not name."""
    from . import cells
    config: dict = {}
    for path in a.configfiles:
        config = cells._merge(config, _read_yaml(path, label=""))
    try:
        cells.check_schema(config)
        cfg = cells.resolve(config)
        planned = cells.plan(cfg)
    except cells.ConfigError as e:
        raise L2CError(f"{' + '.join(a.configfiles)}: {e}") from None
    missing = cells.missing_files(cfg)
    print(f"{' + '.join(a.configfiles)}: valid; {len(planned)} cells over {len(cfg['models'])} model(s)"
          + (f"; {len(missing)} external file(s) not present here (checkpoints, VAE, data: see `snakemake -n`)"
             if missing else ""))


@command("calibrate")
def cmd_calibrate(a: argparse.Namespace) -> None:
    from .caching.cli import run_calibrate
    V.check_nfe("--nfe", a.nfe, a.sampler)
    run_calibrate(a)


def _bench_checks(a: argparse.Namespace) -> None:
    """Shared by bench and bench-router: NFE for the sampler, and the model's space (pixels or latents)."""
    V.check_nfe("--nfe", a.nfe, a.sampler)
    from .bench import resolve_model_args
    resolve_model_args(a)


@command("bench")
def cmd_bench(a: argparse.Namespace) -> None:
    _bench_checks(a)
    _check_schedule_flags(a)
    if a.reuse_fraction is not None and (a.router or a.schedule or getattr(a, "method", None)):
        raise L2CError(f"--reuse-fraction {a.reuse_fraction} is for timing without a router, schedule or method; drop it")
    if getattr(a, "method", None):
        from .caching.cli import bench_method
        bench_method(a)
        return
    from .bench import bench_cli
    bench_cli(a)


@command("bench-router")
def cmd_bench_router(a: argparse.Namespace) -> None:
    _bench_checks(a)
    _check_cache_steps(a, a.nfe, a.sampler)
    from .bench import bench_router_cli
    bench_router_cli(a)


@command("encode-latents")
def cmd_encode_latents(a: argparse.Namespace) -> None:
    from .vae import encode_latents
    if a.image_size % 8:
        raise L2CError(f"--image-size {a.image_size}: the SD autoencoder downsamples by 8; expected a multiple of 8")
    if not a.data.startswith("folder:"):
        raise L2CError(f"--data {a.data!r}: expected folder:PATH (ImageNet-style class folders)")
    print(encode_latents(a.data, a.out, a.vae, image_size=a.image_size, mode=a.mode, seed=a.seed, limit=a.limit,
                         batch_size=a.batch_size, shard_size=a.shard_size, device=a.device, progress=not a.no_progress))


# -- parser ----------------------------------------------------------------------------------------

def _schedule_args(p: argparse.ArgumentParser, schedule: bool = True) -> None:
    p.add_argument("--router", help="a router file: ours (router.pt of l2c train-router) or the authors' "
                                    "(DDIM*_router.pt / dpm*_router.pth)")
    p.add_argument("--theta", type=float, default=None, help="router threshold in [0, 1]: compute iff sigmoid(beta) > theta")
    if schedule:
        p.add_argument("--schedule", help="a cache schedule JSON written by the suite")


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (``l2c CMD: error: ...``, exit 2), like every other refused input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .caching.cli import add_calibrate_parser, add_method_args
    ap = _Parser(prog="l2c", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress; show the traceback of an unexpected error")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train a diffusion transformer on a data set (resumable)")
    p.add_argument("--config", help="YAML with PretrainConfig keys (model, model_kwargs, data, steps, ...)")
    p.add_argument("--out", required=True, help="output folder (checkpoint.pt, model.pt, train_log.jsonl, record.json)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("macs", help="MACs (thop convention) and remove ratios of a sampling setting")
    p.add_argument("--model", required=True, help="e.g. DiT-XL/2")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--pixel", action="store_true", help="pixel-space model (default: SD-VAE latents, image/8)")
    p.add_argument("--in-channels", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpm2"])
    p.add_argument("--nfe", type=int, required=True)
    _schedule_args(p)
    add_method_args(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("sample", help="generate one cell's samples as an ADM .npz (sharded, resumable)")
    p.add_argument("--config", help="YAML with SampleConfig keys; flags override it")
    p.add_argument("--out", required=True, help="output .npz (arr_0 uint8 NHWC, arr_1 labels) + .json sidecar")
    p.add_argument("--checkpoint", help="model checkpoint (default: the embedded digits DiT)")
    p.add_argument("--model", help="model name for official state dicts, e.g. DiT-XL/2")
    p.add_argument("--model-kwargs", help='JSON model options, e.g. \'{"input_size": 32}\'')
    p.add_argument("--vae", help="AutoencoderKL folder for latent models (SD VAE)")
    p.add_argument("--sampler", choices=["ddim", "dpm2"])
    p.add_argument("--nfe", type=int)
    p.add_argument("--cfg-scale", dest="cfg_scale", type=float)
    p.add_argument("--cfg-channels", dest="cfg_channels", type=int, help="guide only the first C eps channels (DiT-XL/2 official: 3)")
    _schedule_args(p)
    add_method_args(p)
    p.add_argument("--num-samples", dest="num_samples", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--labels", choices=["uniform", "balanced"])
    p.add_argument("--shard-size", dest="shard_size", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["fp32", "bf16", "tf32"])
    p.add_argument("--compile", action="store_true", default=None,
                   help="run the blocks' branches through torch.compile (two graphs per block class, any schedule; "
                        "equal to eager up to fp32 rounding)")
    p.add_argument("--shards", help="compute only shards A:B (fan-out over jobs); a later run without it merges")
    p.add_argument("--keep-shards", action="store_true")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("train-router", help="train a Learning-to-Cache, learning-to-drop or trajectory router (resumable)")
    p.add_argument("--config", help="YAML with RouterConfig keys; flags override it")
    p.add_argument("--out", required=True, help="folder: router.pt, router_official.pt, train_log.jsonl, record.json")
    p.add_argument("--checkpoint", help="model (default: the embedded digits DiT)")
    p.add_argument("--data", help="digits:train, folder:PATH or latents:PATH.npz")
    p.add_argument("--sampler", choices=["ddim", "dpm2"])
    p.add_argument("--nfe", type=int)
    p.add_argument("--lam", "--lambda", dest="lam", type=float, help="lambda of Eq. 9")
    p.add_argument("--objective", choices=["cache", "drop", "trajectory"])
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--ste-threshold", dest="ste_threshold", type=float)
    p.add_argument("--no-clamp", action="store_true", help="do not clamp the logits to [-5, 5] (U-ViT recipe)")
    p.add_argument("--reduction", choices=["mean", "sum"], help="MSE over all outputs (mean, DiT) or per-sample sum (U-ViT)")
    p.add_argument("--trajectory-loss", dest="trajectory_loss", choices=["x0", "final"],
                   help="trajectory objective: per-step predicted-x0 error (x0) or the final image's error (final)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="the model's branches through torch.compile, forward and backward (gradients equal to eager "
                        "up to fp32 rounding; pays off on long trajectory runs: benchmarks/router_paths.py)")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", help="cpu (default) or cuda[:N]")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("schedule", help="write a cache schedule: router at theta, heuristic or interval at a budget")
    p.add_argument("--out", required=True)
    _schedule_args(p, schedule=False)
    p.add_argument("--kind", choices=["full", "interval", "deepcache", "faster-diffusion", "bottom", "top", "random", "metrics",
                                      "bottom-attn", "bottom-mlp", "top-attn", "top-mlp", "random-drop"])
    p.add_argument("--budget", type=int, help="number of (cache step, sub-layer) pairs to reuse")
    p.add_argument("--match", help="take the budget from this schedule JSON (matched budget)")
    p.add_argument("--profile", help="redundancy profile CSV (for --kind metrics)")
    p.add_argument("--nfe", type=int, required=True)
    p.add_argument("--depth", type=int, default=12, help="number of blocks (embedded DiT: 12, DiT-XL/2: 28)")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpm2"])
    p.add_argument("--interval", type=int, default=2)
    p.add_argument("--deep-from", dest="deep_from", type=int, default=0, help="interval: reuse blocks from this one on")
    p.add_argument("--shallow", type=int, default=1, help="deepcache: blocks recomputed on each side of the U")
    p.add_argument("--encoder-blocks", dest="encoder_blocks", type=int, default=None,
                   help="faster-diffusion: leading blocks reused at non-key steps (default depth // 2: U-ViT's in-blocks)")
    p.add_argument("--key-steps", dest="key_steps", help="faster-diffusion: comma-separated key steps (default: its DDIM-50 set scaled)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("profile", help="redundancy profile: error of reusing each sub-layer's previous output")
    p.add_argument("--out", required=True, help="tidy CSV")
    p.add_argument("--checkpoint")
    p.add_argument("--model")
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpm2"])
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--cfg-channels", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--seed", type=int, default=1234)

    p = sub.add_parser("evaluate", help="IS / FID / sFID / precision / recall / KID of a sample file (ADM protocol)")
    p.add_argument("samples", help="samples .npz (arr_0 uint8 NHWC)")
    p.add_argument("--ref", required=True, help="reference batch .npz (arr_0; mu/sigma/mu_s/sigma_s used when present)")
    p.add_argument("--backend", default="digits", choices=["digits", "inception-adm"])
    p.add_argument("--weights", help="feature network weights (default: embedded digits net / $TORCH_HOME Inception)")
    p.add_argument("--paired-with", dest="paired_with", help="uncached samples of the same seeds: adds PSNR / MSE")
    p.add_argument("--out", help="result JSON")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-kid", action="store_true")
    p.add_argument("--allow-download", action="store_true", help="let torch-fidelity download the Inception weights")
    p.add_argument("--cleanfid", default="full", choices=["full", "frechet"],
                   help="clean-fid cross-check of the FID: its feature loop with our network and its Frechet distance "
                        "(full), or its Frechet distance on our statistics only (frechet)")
    p.add_argument("--feature-cache", dest="feature_cache",
                   help="folder keeping the reference features by content (the reference file's sha256, the extractor "
                        "and its weights, batch, device, versions, feature code), so evaluations sharing a reference "
                        "extract them once")

    p = sub.add_parser("reference", help="write the digits reference split as an ADM reference batch")
    p.add_argument("--out", required=True)

    p = sub.add_parser("train-features", help="train the digits feature network of the embedded metrics back-end")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("embedded-report", help="quality of the embedded model (issue 3 numbers) into OUT/quality.json")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint")
    p.add_argument("--n-main", type=int, default=2000)
    p.add_argument("--n-cache", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpm2"])
    p.add_argument("--cfg-scale", type=float, default=1.5,
                   help="guidance scale (DiT form for DiT; U-ViT form eps_c + s (eps_c - eps_u) for U-ViT: 0.5 ~ DiT's 1.5)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("bench", help="latency of full vs cached sampling, with the MACs-ideal speedup beside it")
    _bench_model_args(p)
    _schedule_args(p)
    p.add_argument("--reuse-fraction", type=float, default=None,
                   help="without a router/schedule: reuse a seeded random share of the sub-layers in every cache step")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true",
                   help="time the torch.compile path (compiled branches, two graphs per block class; the warm-up runs compile)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="also write the result to this JSON file")
    add_method_args(p)

    add_calibrate_parser(sub)

    p = sub.add_parser("encode-latents", help="encode an image data set once with the SD autoencoder (latents:PATH.npz)")
    p.add_argument("--data", required=True, help="folder:PATH (ImageNet-style class folders)")
    p.add_argument("--vae", required=True, help="AutoencoderKL folder / local HF id, or an LDM-layout file (autoencoder_kl_ema.pth)")
    p.add_argument("--out", required=True, help="output .npz (latents [N,4,H/8,W/8] scaled by 0.18215, labels [N])")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--mode", default="sample", choices=["sample", "mean"], help="posterior sample (seeded per image) or mean")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="encode only the first N images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=4096, help="images per resumable shard")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("check-config", help="check a workflow config (YAML line of a syntax error, key path of a bad value)")
    p.add_argument("configfiles", nargs="+", metavar="CONFIG", help="config files in snakemake --configfile order")

    p = sub.add_parser("bench-router", help="router-training iterations/s with the teacher/student/cache-fill split")
    _bench_model_args(p)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=20, help="timed iterations")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--lam", type=float, default=1e-3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", help="also write the result to this JSON file")
    for p in sub.choices.values():  # -v after the sub-command too (SUPPRESS: never resets the top-level flag)
        if "--verbose" not in p._option_string_actions:
            p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                           help="log progress; show the traceback of an unexpected error")
    return ap


def _bench_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="registered model name (default: the embedded digits DiT's architecture, DiT-Tiny/2 on 8x8x1 "
                        "pixels, 10 classes); official checkpoints need it")
    p.add_argument("--checkpoint", help="model weights (default: random weights; speed does not depend on them)")
    p.add_argument("--image-size", type=int, default=None,
                   help="image size in pixels (default: 8 for the default model, 256 for a named one)")
    space = p.add_mutually_exclusive_group()
    space.add_argument("--pixel", action="store_true", default=None,
                       help="the model works on pixels (the default for the default model)")
    space.add_argument("--latent", action="store_true",
                       help="the model works on SD-VAE latents, image size / 8 (the default for a named model)")
    p.add_argument("--in-channels", type=int, default=None, help="default: 1 for the default model, 4 for a named one")
    p.add_argument("--num-classes", type=int, default=None, help="default: 10 for the default model, 1000 for a named one")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpm2"])
    p.add_argument("--nfe", type=int, default=20)


def _subparser(ap: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for act in ap._actions:
        if isinstance(act, argparse._SubParsersAction):
            return act.choices[name]
    raise KeyError(name)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success; 2 with one line ``l2c CMD: error: ...`` for refused input (flags, files,
    config values, outputs that would replace inputs) or a file-system error; 1 with one line for
    anything unexpected (a possible bug: ``--verbose`` re-raises it with its traceback). Run as a
    program inside a workflow run, the command runs in the run's job server (``l2c.jobserver``)."""
    if argv is None:
        from .jobserver import forward
        code = forward("call", "l2c.cli:main")
        if code is not None:
            return code
    ap = build_parser()
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        preflight(a, _subparser(ap, a.command))
        COMMANDS[a.command](a)
    except L2CError as e:
        print(f"l2c {a.command}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"l2c {a.command}: interrupted; rerun the same command to resume where it can", file=sys.stderr)
        return 130
    except OSError as e:  # permission denied, disk full, a path that cannot be made
        if a.verbose:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"l2c {a.command}: error: {e.strerror or type(e).__name__}{where}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the last resort: one line, the traceback on request
        if a.verbose:
            raise
        print(f"l2c {a.command}: error: unexpected {type(e).__name__}: {_one_line(str(e))[:300]} "
              "(rerun with --verbose for the traceback; please report it if the input looks right)", file=sys.stderr)
        return 1
    return 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
