"""The benchmark grid as cells, and the per-cell stages the Snakemake workflow calls.

A *cell* is one (model, NFE, method) entry of the paper's tables: ``full`` (the uncached sampler),
``l2c-lam{λ}-th{θ}`` (Learning-to-Cache, paper Eq. 9 router at threshold θ), ``fewer-lam{λ}``
(fewer sampling steps with the MACs of that L2C cell, Table 1), the Fig. 4 heuristics at the L2C
cell's budget (``bottom``, ``top``, ``random-s{seed}``, ``metrics``, ``interval``, ``deepcache``,
``faster-diffusion``), the Tables 5/7
drop baselines (``drop`` = learning-to-drop, ``random-drop-s{seed}``), ``cache-all`` (Table 6),
``official-th{θ}`` (the authors' released router), beyond the paper, ``traj-lam{λ}-th{θ}``
(a trajectory-trained router, ``l2c.router`` objective ``trajectory``) with its fewer-steps twin
``fewer-traj-lam{λ}``, and the field's caching methods of ``l2c.caching`` (key ``methods``: one cell per
row, named by the family's registry, e.g. ``taylorseer-n3o3``, ``teacache-th0.4``, ``fbcache``).

Two halves, one file:

- planning (:func:`resolve`, :func:`plan`, :func:`routers`, :func:`missing_files`): pure Python,
  no torch import, called by ``workflow/rules/common.smk`` at parse time;
- stages (:func:`make_schedule`, :func:`sample_cell`, :func:`measure_latency`, :func:`profile_cell`,
  :func:`train_router_cell`, :func:`pretrain_model`, :func:`cell_record`): thin calls into the
  package, each used by one ``workflow/scripts/*.py`` adapter. torch is imported inside them.

Config keys are documented in ``config/config.yaml``; defaults live here (:data:`DEFAULTS`,
:data:`MODEL_DEFAULTS`, :data:`NFE_DEFAULTS`) and nowhere else."""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parent.parent

# -- defaults ------------------------------------------------------------------------------------

DEFAULTS: dict[str, Any] = {
    "results": "results",  # data (one JSON per cell), tables, figures: small, committed
    "work": "work",  # samples, routers, checkpoints, logs, benchmarks: large, not committed
    "check_files": True,  # stop before any job when a checkpoint / VAE / reference / data file is missing
    "device": "cpu",  # device of sampling, evaluation and latency jobs (cuda: jobs request resources gpu=1)
    "dtype": "fp32",  # fp32 | bf16 | tf32 (sampling); latency uses fp32 | bf16
    "threads": 1,  # torch threads per job
    "job_server": True,  # local runs: jobs fork from one server that imported torch once (l2c.jobserver)
    "rate_limit": False,  # local runs: Snakemake's default job-rate limit off (l2c.localrun)
    "joint_routers": True,  # the routers of a model and NFE that can share their passes train in one job
    "sample_jobs": 1,  # >1: each cell's sampling fans out over this many shard-range jobs + one merge
    "random_seeds": [0, 1, 2],  # seeds of the random heuristics (Fig. 4 "Manual: Random", random drop)
    "sampling": {"num_samples": 1000, "seed": 0, "labels": "uniform", "shard_size": 250, "batch_size": 250,
                 "compile": False},
    "latency": {"batch": 8, "repeats": 5, "warmup": 1, "seed": 0, "exclusive": True},
    "profile": {"num_samples": 64, "seed": 1234},
    "router": {"steps": 2000, "batch_size": 64, "lr": 1e-3, "clamp": 5.0, "reduction": "mean", "seed": 0,
               "label_dropout": 0.1, "ste_threshold": None, "stack_students": 0, "compile": False},
    "figures": {"grid_samples": 16, "grid_methods": ["full", "l2c", "fewer", "drop", "random-drop"]},
    "inception_weights": None,  # inception-adm weights file (default: torch-fidelity's place under $TORCH_HOME)
    "rehearsal": None,  # stand-in inputs made by the workflow (config/rehearsal.yaml; l2c.rehearsal)
    "models": {},
}

MODEL_DEFAULTS: dict[str, Any] = {
    "label": None,  # shown in tables; default: the model key
    "paper": None,  # the paper's row name (e.g. "DiT-XL/2 256") whose published numbers sit beside ours
    "checkpoint": None,  # model weights; omit when ``pretrain`` makes them inside the workflow
    "pretrain": None,  # {config: YAML, <PretrainConfig keys>}: train the model in the workflow (embedded data only)
    "model": None,  # registry name for official plain state dicts, e.g. DiT-XL/2
    "model_kwargs": {},  # e.g. {input_size: 32}
    "vae": None,  # SD-VAE folder for latent models
    "data": "digits:train",  # router training data: digits:train | latents:PATH.npz | folder:PATH
    "reference": "digits",  # reference batch: "digits" (made by the workflow) or an ADM .npz path
    "backend": "digits",  # metrics feature backend: digits | inception-adm
    "sampler": "ddim",  # ddim | dpm2
    "cfg_scale": 1.5,
    "cfg_channels": None,  # DiT-XL/2 official: 3
    "sources": {},  # where to get each external file: {checkpoint: ..., vae: ..., reference: ..., data: ..., official_router: ...}
    "sampling": {},  # overrides of the top-level ``sampling``
    "latency": {},  # overrides of the top-level ``latency``
    "router": {},  # overrides of the top-level ``router``
    "nfe": {},
}

NFE_DEFAULTS: dict[str, Any] = {
    "lambdas": [],  # routers trained (one L2C cell each at ``theta``; Table 1 rows, Table 9 ablation)
    "lambda": None,  # the main lambda (Table 8); default: the first of ``lambdas``
    "theta": 0.1,  # the main threshold (compute iff sigmoid(beta) > theta)
    "thetas": [],  # theta sweep of the main router (Fig. 6)
    "fewer_lambdas": None,  # fewer-steps cells matched to these L2C cells (default: [lambda])
    "heuristics": [],  # heuristics at matched budgets: bottom, top, random, metrics, interval, deepcache, faster-diffusion
    "heuristic_lambdas": None,  # budgets of these L2C cells (default: [lambda])
    "drop": [],  # Tables 5/7 at the main L2C budget: drop (learning-to-drop), random-drop
    "cache_all": False,  # Table 6: every sub-layer reused in every cache step (dpm2: shifted and unshifted)
    "official_router": None,  # the authors' released router file for this setting (adds official-th{theta})
    "router": {},  # overrides of the model's router settings (e.g. steps)
    # Beyond the paper (HarmoniCa-style): trajectory-trained routers, every step but the first may reuse
    "trajectory_lambdas": [],  # one trajectory router each -> traj-lam{λ}-th{θ} + fewer-traj-lam{λ} (same MACs)
    "trajectory_theta": 0.5,  # compute iff sigmoid(beta) > theta
    "trajectory_router": {},  # overrides of the router settings for trajectory training (steps, batch_size, lr)
    # The field's caching methods (l2c.caching registry): {family: [params, ...]}, one cell per row
    "methods": {},
}

HEURISTICS = ("bottom", "top", "random", "metrics", "interval", "deepcache", "faster-diffusion")
DROPS = ("drop", "random-drop")
SEEDED = ("random", "random-drop")


def fmt(x: float) -> str:
    """Canonical short form of a lambda / theta in file names: 1e-06, 0.0005, 0.1."""
    return f"{float(x):g}"


def _merge(base: dict, over: dict | None) -> dict:
    """Deep merge (dicts merge, everything else replaces), without touching the inputs."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


class ConfigError(ValueError):
    """A config value that the JSON schema cannot catch (cross-references between keys)."""


def _real(x: Any, where: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
          hi_open: bool = False) -> float:
    """A config number (YAML reads 1e-6 as a string) that is finite and in the given range."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {x!r} is not a number") from None
    if isinstance(x, bool) or not math.isfinite(v):
        raise ConfigError(f"{where}: {x!r} is not a finite number")
    if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and (v >= hi if hi_open else v > hi)):
        rng = (f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}" if lo is not None and hi is not None
               else f"{'>' if lo_open else '>='} {lo:g}" if lo is not None else f"{'<' if hi_open else '<='} {hi:g}")
        raise ConfigError(f"{where}: {x!r} is out of range; expected a number {rng}")
    return v


# ranges of the real-valued keys of the router / pretrain sections and of a model row (YAML reads 1e-6
# as a string, so the schema accepts numeric strings and these ranges are checked here)
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "lr": (0, None, True, False), "clamp": (0, None, True, False), "label_dropout": (0, 1, False, True),
    "ste_threshold": (0, 1, False, False), "weight_decay": (0, None, False, False), "lr_decay_to": (0, 1, False, False),
    "ema_decay": (0, 1, False, True), "grad_clip": (0, None, False, False), "cfg_scale": (0, None, False, False),
}


def _check_ranges(section: Any, where: str) -> None:
    """The ranged numbers of one section of the raw config, named by their key path."""
    if not isinstance(section, dict):
        return
    for key, (lo, hi, lo_open, hi_open) in RANGES.items():
        if section.get(key) is not None:
            _real(section[key], f"{where}.{key}", lo, hi, lo_open, hi_open)


def _check_raw(config: dict) -> None:
    """Ranges checked where they are written (before defaults and overrides are merged)."""
    _check_ranges(config.get("router"), "router")
    for name, m in (config.get("models") or {}).items():
        if not isinstance(m, dict):
            continue
        _check_ranges(m, f"models.{name}")
        _check_ranges(m.get("router"), f"models.{name}.router")
        _check_ranges(m.get("pretrain"), f"models.{name}.pretrain")
        for key, s in (m.get("nfe") or {}).items():
            for sec in ("router", "trajectory_router"):
                _check_ranges((s or {}).get(sec), f"models.{name}.nfe.{key}.{sec}")


def check_schema(config: dict, schema: str | os.PathLike | None = None) -> None:
    """Validate against the workflow's JSON schema with a one-line error naming the key path
    (``models.dit-digits.nfe.20.theta: ...``), then the ranges and cross-references of :func:`resolve`."""
    import jsonschema
    import yaml
    path = Path(schema) if schema else REPO / "workflow" / "schemas" / "config.schema.yaml"
    validator = jsonschema.Draft202012Validator(yaml.safe_load(path.read_text()))
    err = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if err is not None:
        key = ".".join(str(k) for k in err.absolute_path) or "(top level)"
        raise ConfigError(f"{key}: {' '.join(err.message.split())}")


def _local(path: str | None, repo: Path = REPO) -> str | None:
    """A config path: absolute, or relative to the working directory, else to the repository."""
    if path is None:
        return None
    p = Path(path)
    if p.is_absolute() or p.exists() or not (repo / p).exists():
        return str(p)
    return str(repo / p)


def resolve(config: dict) -> dict:
    """The config with every default filled in, NFE keys as ints, numbers as floats, per-model and
    per-NFE overrides merged into ``sampling`` / ``latency`` / ``router``, and input paths resolved."""
    _check_raw(config)
    cfg = _merge(DEFAULTS, config)
    for key in ("check_files", "job_server", "rate_limit", "joint_routers"):  # --config check_files=false gives a string
        cfg[key] = cfg[key] in (True, "true")
    cfg["inception_weights"] = _local(cfg["inception_weights"])
    for name, m in cfg["models"].items():
        m = _merge(MODEL_DEFAULTS, m)
        where = f"models.{name}"
        m["label"] = m["label"] or name
        for key in ("sampling", "latency", "router"):
            m[key] = _merge(cfg[key], m[key])
        if m["checkpoint"] is None and m["pretrain"] is None:
            raise ConfigError(f"{where}: give a checkpoint or a pretrain section")
        if m["checkpoint"] is not None and m["pretrain"] is not None:
            raise ConfigError(f"{where}: give either checkpoint or pretrain, not both")
        # made inside the workflow: the pretrained checkpoint and the digits reference batch
        m["checkpoint"] = f"{cfg['work']}/{name}/pretrain/model.pt" if m["pretrain"] else _local(m["checkpoint"])
        m["vae"] = _local(m["vae"])
        m["reference"] = f"{cfg['work']}/reference/digits.npz" if m["reference"] == "digits" else _local(m["reference"])
        if m["pretrain"] and m["pretrain"].get("config"):
            m["pretrain"]["config"] = _local(m["pretrain"]["config"])
        kind, _, arg = m["data"].partition(":")
        if kind in ("latents", "folder"):
            m["data"] = f"{kind}:{_local(arg)}"
        nfes = {}
        for key, s in m["nfe"].items():
            try:
                nfe = int(key)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}.nfe: key {key!r} is not an NFE (an integer)") from None
            if isinstance(key, bool) or not 1 <= nfe <= 1000 or str(nfe) != str(key).strip():
                raise ConfigError(f"{where}.nfe.{key}: an NFE is an integer in [1, 1000] (the diffusions' 1000 timesteps)")
            if m["sampler"] == "dpm2" and nfe % 2:
                raise ConfigError(f"{where}.nfe.{key}: DPM-Solver-2 (sampler: dpm2) makes 2 model evaluations per step, "
                                  f"so its NFE must be even (use {max(nfe - 1, 2)} or {nfe + 1})")
            nfes[nfe] = _resolve_nfe(_merge(NFE_DEFAULTS, s), f"{where}.nfe.{nfe}", m)
        m["nfe"] = nfes
        cfg["models"][name] = m
    return cfg


def _resolve_nfe(s: dict, where: str, m: dict) -> dict:
    s["lambdas"] = [_real(x, f"{where}.lambdas", 0) for x in s["lambdas"]]
    s["thetas"] = [_real(x, f"{where}.thetas", 0, 1) for x in s["thetas"]]
    s["theta"] = _real(s["theta"], f"{where}.theta", 0, 1)
    if not s["lambdas"]:
        if s["lambda"] is not None or s["thetas"] or s["fewer_lambdas"] or s["heuristics"] or s["drop"]:
            raise ConfigError(f"{where}: lambda / thetas / fewer_lambdas / heuristics / drop need at least one entry in lambdas")
        s["lambda"] = None
    else:
        s["lambda"] = s["lambdas"][0] if s["lambda"] is None else _real(s["lambda"], f"{where}.lambda", 0)
    for key in ("fewer_lambdas", "heuristic_lambdas"):
        vals = [s["lambda"]] if s[key] is None and s["lambda"] is not None else (s[key] or [])
        s[key] = [_real(x, f"{where}.{key}") for x in vals]
        for lam in (s["lambda"], *s[key]):
            if lam is not None and lam not in s["lambdas"]:
                raise ConfigError(f"{where}: lambda {lam:g} (in {'lambda' if lam == s['lambda'] else key}) "
                                  f"is not among lambdas {s['lambdas']}")
    s["official_router"] = _local(s["official_router"])
    s["router"] = _merge(m["router"], s["router"])
    s["trajectory_lambdas"] = [_real(x, f"{where}.trajectory_lambdas", 0) for x in s["trajectory_lambdas"]]
    s["trajectory_theta"] = _real(s["trajectory_theta"], f"{where}.trajectory_theta", 0, 1)
    s["trajectory_router"] = _merge(s["router"], s["trajectory_router"])
    s["methods"] = _resolve_methods(s["methods"], f"{where}.methods")
    if s["trajectory_lambdas"] and m["sampler"] != "ddim":
        raise ConfigError(f"{where}.trajectory_lambdas: the trajectory objective is implemented for the ddim sampler, "
                          f"not {m['sampler']!r}")
    return s


def _resolve_methods(methods: Any, where: str) -> dict[str, list[dict]]:
    """``methods: {family: [params, ...]}`` checked against the registry of ``l2c.caching`` (imported
    without torch): the family is registered, each row a mapping of its parameters."""
    from .caching import registry
    from .caching import methods as _  # noqa: F401  (registers the families)
    if not isinstance(methods, dict):
        raise ConfigError(f"{where}: expected a mapping of method family to a list of parameter rows")
    out = {}
    for name, rows in methods.items():
        if name not in registry.FAMILIES:
            raise ConfigError(f"{where}.{name}: unknown caching method; known: {', '.join(sorted(registry.FAMILIES))}")
        fam = registry.FAMILIES[name]
        rows = [{}] if rows is None else rows
        if not isinstance(rows, list) or not rows:
            raise ConfigError(f"{where}.{name}: expected a list of parameter rows ({{}} for the authors' defaults)")
        out[name] = []
        for i, row in enumerate(rows):
            row = {} if row is None else row
            if not isinstance(row, dict):
                raise ConfigError(f"{where}.{name}.{i}: expected a mapping of parameters, got {row!r}")
            unknown = sorted(set(row) - set(fam.defaults))
            if unknown:
                raise ConfigError(f"{where}.{name}.{i}.{unknown[0]}: not a parameter of {name}; valid: {', '.join(fam.defaults)}")
            out[name].append({k: (float(v) if isinstance(v, str) and _is_number(v) else v) for k, v in row.items()})
    return out


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def method_cells(model: str, nfe: int, s: dict) -> list["Cell"]:
    """The cells of the ``methods`` rows of one (model, NFE), named by each family's registry."""
    from .caching import registry
    out = []
    for name, rows in s["methods"].items():
        fam = registry.FAMILIES[name]
        for row in rows:
            out.append(Cell(model, nfe, fam.cell_name(row), "method", caching=name, params=dict(row),
                            calibration=fam.calibration))
    return out


# -- the grid ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One table cell: its identity and how its schedule is made."""

    model: str
    nfe: int
    method: str
    family: str  # method (a caching method of l2c.caching, see ``caching``) | full | l2c | fewer | bottom | top | random | metrics | interval | deepcache | faster-diffusion | drop | random-drop | cache-all | cache-all-unshifted | official | trajectory
    lam: float | None = None
    theta: float | None = None
    seed: int | None = None
    match: str | None = None  # the L2C cell whose budget (or MACs, for fewer) this cell matches
    router: str | None = None  # router id: cache-lam{λ}, drop-lam{λ}, or "official"
    sweep: bool = False  # outside the main tables: theta sweep (Fig. 6), fewer-steps twins of trajectory cells
    caching: str | None = None  # family "method": the l2c.caching family (taylorseer, teacache, ...)
    params: dict | None = field(default=None, hash=False)  # its parameters (the config row; defaults omitted)
    calibration: str | None = None  # the calibration pass it needs first (l2c calibrate --method), or None

    def to_dict(self) -> dict:
        return asdict(self)


def l2c_method(lam: float, theta: float) -> str:
    return f"l2c-lam{fmt(lam)}-th{fmt(theta)}"


def trajectory_method(lam: float, theta: float) -> str:
    return f"traj-lam{fmt(lam)}-th{fmt(theta)}"


def router_id(objective: str, lam: float) -> str:
    return f"{objective}-lam{fmt(lam)}"


def plan(cfg: dict) -> list[Cell]:
    """Every cell of a resolved config, in table order (models, NFE descending, then methods)."""
    cells: list[Cell] = []
    for model, m in cfg["models"].items():
        for nfe in sorted(m["nfe"], reverse=True):
            cells += _plan_nfe(model, nfe, m["nfe"][nfe], m["sampler"], cfg["random_seeds"])
    keys = [(c.model, c.nfe, c.method) for c in cells]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ConfigError(f"cells planned twice (lambdas or thetas that print alike?): {dup}")
    return cells


def _plan_nfe(model: str, nfe: int, s: dict, sampler: str, seeds: list[int]) -> list[Cell]:
    out = [Cell(model, nfe, "full", "full")]
    lam, theta = s["lambda"], s["theta"]
    for x in s["lambdas"]:
        out.append(Cell(model, nfe, l2c_method(x, theta), "l2c", x, theta, router=router_id("cache", x)))
    for th in s["thetas"]:
        if th != theta:
            out.append(Cell(model, nfe, l2c_method(lam, th), "l2c", lam, th, router=router_id("cache", lam), sweep=True))
    for x in s["fewer_lambdas"]:
        out.append(Cell(model, nfe, f"fewer-lam{fmt(x)}", "fewer", x, theta, match=l2c_method(x, theta)))
    for x in s["heuristic_lambdas"]:
        for kind in s["heuristics"]:
            for seed in (seeds if kind in SEEDED else [None]):
                name = f"{kind}-s{seed}" if seed is not None else kind
                out.append(Cell(model, nfe, f"{name}-lam{fmt(x)}", kind, x, theta, seed, match=l2c_method(x, theta)))
    for kind in s["drop"]:
        for seed in (seeds if kind in SEEDED else [None]):
            name = f"{kind}-s{seed}" if seed is not None else kind
            out.append(Cell(model, nfe, f"{name}-lam{fmt(lam)}", kind, lam, theta, seed, match=l2c_method(lam, theta),
                            router=router_id("drop", lam) if kind == "drop" else None))
    if s["cache_all"]:
        out.append(Cell(model, nfe, "cache-all", "cache-all"))
        if sampler == "dpm2":
            out.append(Cell(model, nfe, "cache-all-unshifted", "cache-all-unshifted"))
    if s["official_router"]:
        out.append(Cell(model, nfe, f"official-th{fmt(theta)}", "official", None, theta, router="official"))
    tt = s["trajectory_theta"]
    for x in s["trajectory_lambdas"]:
        method = trajectory_method(x, tt)
        out.append(Cell(model, nfe, method, "trajectory", x, tt, router=router_id("trajectory", x)))
        out.append(Cell(model, nfe, f"fewer-traj-lam{fmt(x)}", "fewer", x, tt, match=method, sweep=True))
    return out + method_cells(model, nfe, s)


def calibrations(cfg: dict) -> list[tuple[str, int, str]]:
    """Every calibration pass to run: (model, nfe, method family)."""
    return list(dict.fromkeys((c.model, c.nfe, c.caching) for c in plan(cfg) if c.calibration))


def routers(cfg: dict) -> list[tuple[str, int, str, float]]:
    """Every router to train: (model, nfe, objective, lambda)."""
    seen: dict[tuple, None] = {}
    for c in plan(cfg):
        if c.router and c.router != "official":
            seen[(c.model, c.nfe, c.router.split("-lam")[0], c.lam)] = None
    return list(seen)


def router_passes(cfg: dict) -> dict[tuple[str, int, str], list[str]]:
    """(model, nfe, router id) -> the router ids trained in its job, the first being the job that
    trains them. With ``joint_routers`` the routers of one model and NFE that share their no-grad
    passes (``l2c.router.train_routers``: the single-step ones -- L2C at every lambda and
    learning-to-drop -- and, apart, the trajectory ones) train in one job, and each other member's
    job only writes its files from the checkpoint that job left; without it every router trains alone."""
    groups: dict[tuple, list[str]] = {}
    for model, nfe, objective, lam in routers(cfg):
        rid = router_id(objective, lam)
        kind = ("trajectory" if objective == "trajectory" else "single-step") if cfg["joint_routers"] else rid
        groups.setdefault((model, nfe, kind), []).append(rid)
    return {(model, nfe, rid): rids for (model, nfe, _), rids in groups.items() for rid in rids}


def external_files(cfg: dict) -> list[tuple[str, str, str]]:
    """Files the workflow reads but cannot make: (what, path, where to get it)."""
    out = []
    if cfg.get("inception_weights") and any(m["backend"] == "inception-adm" for m in cfg["models"].values()):
        out.append(("inception_weights", cfg["inception_weights"],
                    "torch-fidelity's Inception-v3 weights: https://github.com/toshas/torch-fidelity/releases/download/"
                    "v0.2.0/weights-inception-2015-12-05-6726825d.pth"))
    for name, m in cfg["models"].items():
        src = m["sources"]

        def add(what: str, path: str | None, key: str) -> None:
            if path:
                out.append((f"models.{name}.{what}", path, src.get(key, "see config/paper.yaml and docs/workflow.md")))
        if not m["pretrain"]:
            add("checkpoint", m["checkpoint"], "checkpoint")
        add("vae", m["vae"], "vae")
        if not is_digits_reference(cfg, m):
            add("reference", m["reference"], "reference")
        kind, _, arg = m["data"].partition(":")
        if kind in ("latents", "folder") and any(s["lambdas"] for s in m["nfe"].values()):
            add("data", arg, "data")
        for nfe, s in m["nfe"].items():
            add(f"nfe.{nfe}.official_router", s["official_router"], "official_router")
    return out


def is_digits_reference(cfg: dict, m: dict) -> bool:
    return m["reference"] == f"{cfg['work']}/reference/digits.npz"


def missing_files(cfg: dict) -> list[tuple[str, str, str]]:
    return [f for f in external_files(cfg) if not Path(f[1]).exists()]


def missing_message(missing: list[tuple[str, str, str]]) -> str:
    """One message listing every missing file once, the config keys that name it, and its source
    (``{name}`` in a source is the file's name)."""
    by_path: dict[str, list] = {}
    for what, path, source in missing:
        by_path.setdefault(path, [[], source])[0].append(what)
    lines = [f"{len(by_path)} input file(s) missing; nothing was run. Get each file, or fix its path in the config:"]
    for path, (whats, source) in by_path.items():
        lines.append(f"  - {path}  ({', '.join(whats)})\n      get it from: {source.replace('{name}', Path(path).name)}")
    lines.append("(To plan without the files, e.g. for a dry run: --config check_files=false.)")
    return "\n".join(lines)


# -- stages (torch imported inside) ------------------------------------------------------------------

def _set_threads(threads: int | None) -> None:
    if threads:
        import torch
        torch.set_num_threads(int(threads))


def load_cell_model(m: dict):
    """The model of a model row (our checkpoint format records the architecture)."""
    from .models import load_model
    return load_model(m["checkpoint"], m["model"], **m["model_kwargs"])


def pretrain_model(pre: dict, out_dir: str | os.PathLike, threads: int | None = None) -> Path:
    """``l2c pretrain`` from a model row's ``pretrain`` section: ``config`` (a YAML of
    PretrainConfig keys) overridden by the section's other keys."""
    import yaml

    from .pretrain import PretrainConfig, pretrain
    d = dict(pre)
    base = d.pop("config", None)
    opts = (yaml.safe_load(Path(base).read_text()) or {}) if base else {}
    opts.update(d)
    opts["threads"] = threads or opts.get("threads")
    return pretrain(PretrainConfig(**opts), out_dir, progress=False)


def calibrate_cell(m: dict, nfe: int, method: str, out: str | os.PathLike, *, device: str = "cpu",
                   threads: int | None = None) -> None:
    """``l2c calibrate --method`` for one (model, NFE): uncached runs of the model row's sampler and
    guidance, the record written to ``out`` (under work/, not beside the checkpoint)."""
    from .caching.calibrate import calibrate
    _set_threads(threads)
    model = load_cell_model(m).to(device).eval()
    calibrate(model, method, out, nfe=nfe, sampler=m["sampler"], cfg_scale=m["cfg_scale"], checkpoint=m["checkpoint"])


def profile_cell(m: dict, nfe: int, out: str | os.PathLike, *, num_samples: int, seed: int, threads: int | None = None) -> None:
    """Redundancy profile of one (model, NFE) (paper Fig. 3; ranking of the Metrics heuristic)."""
    import numpy as np

    from .generate import noise_and_labels
    from .profile import profile_redundancy, write_profile
    _set_threads(threads)
    model = load_cell_model(m)
    shape = (model.in_channels, model.input_size, model.input_size)
    noise, labels = noise_and_labels(seed, np.arange(num_samples), shape, model.num_classes)
    df = profile_redundancy(model, noise, labels, nfe=nfe, sampler=m["sampler"], cfg_scale=m["cfg_scale"],
                            cfg_channels=m["cfg_channels"])
    write_profile(df, out)


def router_options(m: dict, nfe: int, objective: str) -> dict:
    """The router settings of a model row's NFE for ``objective`` (the trajectory objective's:
    ``trajectory_router`` over ``router``)."""
    s = m["nfe"][nfe]
    return dict(s["trajectory_router"] if objective == "trajectory" else s["router"])


def router_config(m: dict, nfe: int, objective: str, lam: float, opts: dict, threads: int | None = None,
                  device: str = "cpu"):
    """The ``RouterConfig`` of one router of a model row (``opts``: :func:`router_options`)."""
    from .router import RouterConfig
    return RouterConfig(checkpoint=m["checkpoint"], model=m["model"], model_kwargs=m["model_kwargs"], data=m["data"],
                        sampler=m["sampler"], nfe=nfe, lam=lam, objective=objective, threads=threads, device=device, **opts)


def train_router_cell(m: dict, nfe: int, objective: str, lam: float, opts: dict, out_dir: str | os.PathLike,
                      record_json: str | os.PathLike, threads: int | None = None, device: str = "cpu",
                      companions: Iterable[tuple[str, float, str | os.PathLike]] = ()) -> None:
    """Train one router (``l2c train-router``), together with the ``companions`` (objective, lambda,
    folder) that share its passes (:func:`router_passes`), and write its data record: sigmoid(beta)
    per (step, sub-layer) in sampling order, the training wall time and the last log line (Table 8,
    Fig. 5). The companions' records are written by their own jobs."""
    import torch

    from .io import read_json, write_json
    from .router import load_router, train_routers

    companions = list(companions)
    members = [(objective, lam)] + [(o, x) for o, x, _ in companions]
    cfgs = [router_config(m, nfe, o, x, opts, threads, device) for o, x in members]
    path = train_routers(cfgs, [out_dir] + [d for *_, d in companions], progress=False)[0]
    r = load_router(path)
    rec = read_json(Path(out_dir) / "record.json")
    log_lines = (Path(out_dir) / "train_log.jsonl").read_text().splitlines()
    write_json(record_json, {
        "checkpoint": m["checkpoint"], "nfe": nfe, "sampler": r["sampler"], "objective": objective, "lambda": lam,
        "depth": r["depth"], "cache_steps": r["cache_steps"], "steps": r["steps"],
        "probs": [[round(float(v), 6) for v in row] for row in torch.sigmoid(r["beta"].double())],
        "wall_time_s": rec["wall_time_s"], "s_per_1000_it": rec["s_per_1000_it"],
        "routers_trained_together": rec.get("routers_trained_together", 1),
        "last_log": _last_record(log_lines),
        "config": rec["config"], "environment": rec["environment"],
    })


def _last_record(lines: list[str]) -> dict | None:
    """The last line of a JSON-lines log that parses (a torn line is skipped), or None."""
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def _meta_model(m: dict):
    """The model row's architecture on the meta device (no weights read when ``model`` names it;
    our checkpoint format records it)."""
    import torch

    from .io import load_torch
    from .models import create_model
    if m["model"]:
        name, kw = m["model"], m["model_kwargs"]
    else:
        obj = load_torch(m["checkpoint"], "model checkpoint")
        name, kw = obj["model"], {**obj["model_kwargs"], **m["model_kwargs"]}
    with torch.device("meta"):
        return create_model(name, **kw)


def model_depth(m: dict) -> int:
    """Number of cacheable blocks of a model row."""
    from .models import cacheable_blocks
    return len(cacheable_blocks(_meta_model(m)))


def _model_macs(m: dict):
    """Per-evaluation and per-branch MACs (thop convention) of a model row."""
    import torch

    from .macs import count_model_macs
    model = _meta_model(m)
    with torch.device("meta"):
        x = torch.zeros(1, model.in_channels, model.input_size, model.input_size)
        return count_model_macs(model, x, torch.zeros(1), torch.zeros(1, dtype=torch.long))


def make_method_spec(cell: dict, m: dict, out: str | os.PathLike, calibration: str | None = None) -> None:
    """The "method spec" of a caching-method cell, written where a schedule would be: the family, its
    parameters (the config row), the calibration file, the NFE and sampler. The parameters are checked
    by building the method's plan on the model's architecture (meta device, no weights read)."""
    from .caching import build_engine
    from .io import L2CError, write_json
    try:
        eng = build_engine(_meta_model(m), cell["caching"], nfe=cell["nfe"], sampler=m["sampler"],
                           params=cell["params"], calibration=calibration)
    except L2CError as e:
        raise L2CError(f"cell {cell['model']}/nfe{cell['nfe']}/{cell['method']}: {e}") from None
    write_json(out, {"kind": "method", "method": cell["caching"], "params": cell["params"] or {},
                     "resolved_params": eng.plan.params, "calibration": calibration, "nfe": cell["nfe"],
                     "sampler": m["sampler"], "cell": cell})


def read_spec(path: str | os.PathLike) -> dict:
    """A cell's schedule JSON, or its method spec (``kind: method``)."""
    return json.loads(Path(path).read_text())


def is_method_spec(spec: dict) -> bool:
    return spec.get("kind") == "method"


def make_schedule(cell: dict, m: dict, out: str | os.PathLike, *, router: str | None = None, match: str | None = None,
                  profile: str | None = None, calibration: str | None = None) -> None:
    """Write the cache schedule JSON of a cell (its ``nfe`` is the number of steps actually sampled).

    ``full`` / ``fewer``: compute everything (fewer: k steps with k x MACs per evaluation closest to
    the matched L2C cell's MACs); ``l2c`` / ``official``: router at theta; heuristics and random drop:
    ``l2c.baselines.heuristic_schedule`` at the matched budget; ``interval``: FORA-style, every
    block from ``deep_from`` reused in every cache step, ``deep_from`` chosen to match the budget;
    ``deepcache`` / ``faster-diffusion``: ``l2c.baselines`` schedules with their free parameter (blocks
    recomputed on each side / number of key steps) chosen to come closest to the budget;
    ``drop``: the learning-to-drop router's lowest-probability pairs, exactly the matched budget;
    ``cache-all``: every sub-layer reused in every cache step."""
    import numpy as np

    from .baselines import deepcache_schedule, faster_diffusion_schedule, fd_key_steps, heuristic_schedule, interval_schedule
    from .cache import CacheSchedule, default_cache_steps
    from .macs import macs_report
    from .profile import profile_matrix, read_profile
    from .router import load_router, load_schedule_from_router

    if cell["family"] == "method":
        return make_method_spec(cell, m, out, calibration)
    fam, nfe, sampler = cell["family"], cell["nfe"], m["sampler"]
    target = CacheSchedule.load(match) if match else None
    meta: dict[str, Any] = {"cell": cell}
    if fam == "full":
        sched = CacheSchedule.full(nfe, model_depth(m), sampler)
    elif fam == "fewer":
        mm = _model_macs(m)
        target_macs = macs_report(mm, target, nfe)["macs_total"]
        step = 2 if sampler == "dpm2" else 1  # DPM-Solver-2 takes two evaluations per step
        k = int(min(nfe, max(step, step * round(target_macs / (step * mm.per_eval)))))
        sched = CacheSchedule.full(k, target.depth, sampler, source=f"fewer-steps:{k}")
        meta.update({"fewer_steps_of": nfe, "macs_target": int(target_macs), "macs": int(k * mm.per_eval)})
    elif fam in ("l2c", "official", "trajectory"):
        sched = load_schedule_from_router(router, cell["theta"], sampler=sampler, nfe=nfe)
    elif fam in ("bottom", "top", "random", "metrics", "random-drop"):
        prof = profile_matrix(read_profile(profile)) if fam == "metrics" else None
        sched = heuristic_schedule(fam, target.num_reused, nfe, target.depth, sampler, seed=cell["seed"] or 0, profile=prof)
    elif fam == "interval":
        per_step = target.num_reused / max(len(target.cache_steps), 1)
        deep_from = int(min(target.depth, max(0, target.depth - round(per_step / 2))))
        if sampler == "ddim":
            sched = interval_schedule(nfe, target.depth, 2, sampler, deep_from=deep_from)
        else:  # shifted cache steps (appendix B.1)
            compute = np.ones((nfe, target.depth, 2), bool)
            compute[default_cache_steps(nfe, sampler), deep_from:] = False
            sched = CacheSchedule(compute, default_cache_steps(nfe, sampler), sampler=sampler,
                                  source=f"interval:shifted:from={deep_from}", meta={"deep_from": deep_from})
        meta["budget_target"] = target.num_reused
    elif fam == "deepcache":  # recompute `shallow` blocks on each side, reuse the middle in the L2C cache steps
        per_step = target.num_reused / max(len(target.cache_steps), 1)
        shallow = int(min(target.depth // 2, max(0, round((target.depth - per_step / 2) / 2))))
        sched = deepcache_schedule(nfe, target.depth, shallow, sampler)
        meta["budget_target"] = target.num_reused
    elif fam == "faster-diffusion":  # the encoder half reused at non-key steps; key steps for the budget
        enc = target.depth // 2
        n_cache = int(min(nfe - 1, max(0, round(target.num_reused / (2 * enc)))))
        sched = faster_diffusion_schedule(nfe, target.depth, enc, sampler, key_steps=fd_key_steps(nfe, nfe - n_cache))
        meta["budget_target"] = target.num_reused
    elif fam == "drop":
        r = load_router(router)
        probs = 1 / (1 + np.exp(-r["beta"].double().numpy()))
        pairs = sorted((probs[k, j], k, j) for k in r["cache_steps"] for j in range(probs.shape[1]))
        flat = np.ones(probs.shape, bool)
        for _, k, j in pairs[:target.num_reused]:
            flat[k, j] = False
        sched = CacheSchedule.from_mask(flat, r["cache_steps"], sampler=sampler, policy="drop",
                                        source=f"router-budget:{Path(router).parent.name}", meta={"budget": target.num_reused})
    elif fam in ("cache-all", "cache-all-unshifted"):
        depth = model_depth(m)
        steps = default_cache_steps(nfe, sampler if fam == "cache-all" else "dpm2-unshifted")
        compute = np.ones((nfe, depth, 2), bool)
        compute[steps] = False
        sched = CacheSchedule(compute, steps, sampler=sampler if fam == "cache-all" else "dpm2-unshifted", source=fam)
    else:
        from .io import L2CError
        raise L2CError(f"cell {cell['method']}: unknown family {fam!r}")
    sched.meta = {**sched.meta, **meta}
    if target is not None:
        sched.meta["matched_to"] = {"method": cell["match"], "num_reused": target.num_reused}
    sched.save(out)


def sample_config(m: dict, schedule_json: str | os.PathLike, device: str, dtype: str):
    """The ``SampleConfig`` of a cell: the model row's sampling settings at the schedule's NFE;
    a schedule that reuses nothing samples without the cache engine."""
    from .cache import CacheSchedule
    from .generate import SampleConfig
    s = m["sampling"]
    spec = read_spec(schedule_json)
    if is_method_spec(spec):  # a caching method of l2c.caching
        return SampleConfig(checkpoint=m["checkpoint"], model=m["model"], model_kwargs=m["model_kwargs"], vae=m["vae"],
                            sampler=m["sampler"], nfe=spec["nfe"], cfg_scale=m["cfg_scale"], cfg_channels=m["cfg_channels"],
                            method=spec["method"], method_params=spec["params"], calibration=spec["calibration"],
                            num_samples=s["num_samples"], seed=s["seed"], labels=s["labels"], shard_size=s["shard_size"],
                            batch_size=s["batch_size"], device=device, dtype=dtype, compile=s["compile"])
    sched = CacheSchedule.load(schedule_json)
    return SampleConfig(checkpoint=m["checkpoint"], model=m["model"], model_kwargs=m["model_kwargs"], vae=m["vae"],
                        sampler=m["sampler"], nfe=sched.nfe, cfg_scale=m["cfg_scale"], cfg_channels=m["cfg_channels"],
                        schedule=str(schedule_json) if sched.num_reused else None, num_samples=s["num_samples"],
                        seed=s["seed"], labels=s["labels"], shard_size=s["shard_size"], batch_size=s["batch_size"],
                        device=device, dtype=dtype, compile=s["compile"])


def shard_range(m: dict, part: int, parts: int) -> tuple[int, int]:
    """Shards [first, stop) of job ``part`` of ``parts`` (``l2c sample --shards first:stop``)."""
    s = m["sampling"]
    total = -(-s["num_samples"] // s["shard_size"])
    return part * total // parts, (part + 1) * total // parts


def sample_cell(m: dict, schedule_json: str | os.PathLike, out: str | os.PathLike, *, device: str, dtype: str,
                part: tuple[int, int] | None = None, threads: int | None = None) -> None:
    """``l2c sample`` of one cell: all shards then merge, or only the shards of job ``part = (i, n)``
    (shards kept for the merge job, which runs without ``part``)."""
    from .generate import generate
    _set_threads(threads)
    cfg = sample_config(m, schedule_json, device, dtype)
    if part is None:
        generate(cfg, out, progress=False)
    else:
        generate(cfg, out, shards=shard_range(m, *part), progress=False, keep_shards=True)


LATENCY_BRACKET = 3  # cells timed between two runs of the uncached sampler in a latency round


def measure_latency(m: dict, schedule_json: str | os.PathLike, nfe: int, **kw: Any) -> dict:
    """The latency record of one cell (:func:`measure_latencies` of a group of one)."""
    return measure_latencies(m, {"cell": schedule_json}, nfe, **kw)["cells"]["cell"]


def measure_latencies(m: dict, schedules: dict[str, str | os.PathLike], nfe: int, *, device: str, dtype: str, batch: int,
                      repeats: int, warmup: int, seed: int, threads: int | None = None, progress: bool = False) -> dict:
    """In-process latency of every cell of one (model, NFE) against the uncached sampler at the grid
    NFE, in one process (``l2c.bench.time_sampling``; paper convention: batch with CFG, sampling loop
    only, no VAE). ``schedules``: cell name -> its schedule or method spec. Each of ``repeats`` rounds
    (after ``warmup`` untimed runs of everything) times every cell once in a seeded random order, with
    the uncached sampler before the first cell and after every ``LATENCY_BRACKET`` cells, so each cell
    is timed within seconds of two uncached runs: its speedup is the median over rounds of their mean
    over its time (drift cancels as in pairwise interleaving, at a third of the uncached runs); its
    latency is the median of its times, the uncached latency the median of all uncached runs
    (``progress``: a bar over the rounds, on stderr). Returns
    ``{"cells": {name: record}, ...}``; a record also holds the thop-convention MACs (a caching
    method: of the decisions its last timed run took)."""
    import random
    import statistics
    from contextlib import nullcontext

    import torch
    from tqdm import tqdm

    from .bench import DTYPES, time_sampling
    from .io import environment_record
    from .macs import count_model_macs
    _set_threads(threads)
    dev = torch.device(device)
    model = load_cell_model(m).to(dev)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, model.in_channels, model.input_size, model.input_size, generator=g).to(dev)
    labels = torch.randint(model.num_classes, (batch,), generator=g).to(dev)
    autocast = torch.autocast(dev.type, dtype=DTYPES[dtype]) if dtype in ("bf16", "fp16") else nullcontext()
    if dtype == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    common = dict(sampler=m["sampler"], cfg_scale=m["cfg_scale"], cfg_channels=m["cfg_channels"], autocast=autocast)
    mm = count_model_macs(model, noise[:1], torch.zeros(1, device=dev), labels[:1])
    cases = {name: _latency_case(model, m, path, nfe, mm) for name, path in schedules.items()}
    runs = {None: dict(nfe=nfe)} | {name: c["run"] for name, c in cases.items() if c["run"] is not None}
    for kw in runs.values():
        time_sampling(model, noise, labels, repeats=0, warmup=warmup, **kw, **common)

    def timed(name: str | None) -> float:
        return time_sampling(model, noise, labels, repeats=1, warmup=0, **runs[name], **common)[0]
    names = [name for name in runs if name is not None]
    full: list[float] = []
    times: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    rng = random.Random(seed)
    for _ in tqdm(range(repeats), desc=f"latency rounds ({len(names)} cells)", disable=not progress, mininterval=5):
        rng.shuffle(names)
        before, pending = timed(None), []
        full.append(before)
        for i, name in enumerate(names):
            pending.append((name, timed(name)))
            if len(pending) == LATENCY_BRACKET or i == len(names) - 1:
                after = timed(None)
                full.append(after)
                for n, t in pending:  # against the uncached runs just before and after it
                    times[n].append(t)
                    ratios[n].append((before + after) / 2 / t)
                before, pending = after, []
    t_full = statistics.median(full)
    env = environment_record(dev, dtype)
    records = {}
    for name, c in cases.items():
        timed_alone = c["run"] is not None
        records[name] = {
            "nfe": nfe, "nfe_sampled": c["nfe_sampled"], "batch": batch, "repeats": repeats, "warmup": warmup,
            "seed": seed, "cfg_scale": m["cfg_scale"], "latency_full_s": t_full,
            "latency_s": statistics.median(times[name]) if timed_alone else t_full,
            "speedup": statistics.median(ratios[name]) if timed_alone else 1.0,
            "latency_full_all_s": full, "latency_all_s": times[name] if timed_alone else full,
            "speedup_all": ratios[name] if timed_alone else [1.0] * repeats, **c["macs"](), "environment": env}
    return {"model": m.get("label"), "nfe": nfe, "batch": batch, "repeats": repeats, "warmup": warmup, "seed": seed,
            "order": f"per round: the cells in a seeded random order, the uncached sampler before the first and "
                     f"after every {LATENCY_BRACKET}; speedup: median over rounds of the mean of the two uncached "
                     "runs around a cell over the cell's time",
            "latency_full_s": t_full, "latency_full_all_s": full, "environment": env, "cells": records}


def _latency_case(model, m: dict, path: str | os.PathLike, nfe: int, mm: Any) -> dict:
    """How one cell is timed: ``run`` (the ``sample`` arguments of its runs, or None when the cell is
    the uncached sampler itself), ``nfe_sampled`` and ``macs()`` (its MACs record, read after timing;
    ``mm``: the model's MACs table)."""
    from .cache import CacheSchedule
    from .macs import macs_report
    spec = read_spec(path)
    if is_method_spec(spec):  # a caching method of l2c.caching, through its engine
        from .caching import build_engine
        eng = build_engine(model, spec["method"], nfe=spec["nfe"], sampler=m["sampler"], params=spec["params"],
                           calibration=spec["calibration"])

        def method_macs() -> dict:
            per_eval, total = int(eng.macs_table().per_eval), int(sum(eng.macs_per_step()))
            return {"method": spec["method"], "params": eng.plan.params, "macs_per_eval": per_eval, "macs_total": total,
                    "macs_full": per_eval * nfe, "speedup_macs": per_eval * nfe / total,
                    "macs_source": "latency batch (decisions of the last timed run)"}
        return {"run": dict(nfe=spec["nfe"], engine=eng), "nfe_sampled": spec["nfe"], "macs": method_macs}
    sched = CacheSchedule.load(path)
    cell_sched = sched if sched.num_reused else None
    rep = macs_report(mm, cell_sched, sched.nfe)

    def schedule_macs() -> dict:
        per_eval = int(mm.per_eval)
        return {"macs_per_eval": per_eval, "macs_total": rep["macs_total"], "macs_full": per_eval * nfe,
                "speedup_macs": per_eval * nfe / rep["macs_total"]}
    is_full = sched.nfe == nfe and cell_sched is None
    return {"run": None if is_full else dict(nfe=sched.nfe, schedule=cell_sched), "nfe_sampled": sched.nfe,
            "macs": schedule_macs}


# -- one row per cell (no torch) ---------------------------------------------------------------------

def _num(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def cell_record(cell: dict, m: dict, schedule: dict, evaluation: dict, latency: dict, router: dict | None = None,
                samples: dict | None = None) -> dict:
    """The flat data row of one cell, everything a table or figure needs (``results/.../cells/*.json``).
    ``schedule`` is the cell's schedule, or its method spec (a caching method: MACs from the sampling
    record's ``method_macs_per_image``, the decisions its runs actually took)."""
    paired = evaluation.get("paired") or {}
    env = latency.get("environment", {})
    if is_method_spec(schedule):
        macs_full = latency["macs_full"]
        macs = (samples or {}).get("method_macs_per_image")
        macs_total = macs if macs is not None else latency["macs_total"]
        schedule = {"nfe": schedule["nfe"], "policy": "method", "source": f"l2c.caching:{schedule['method']}",
                    "depth": None, "remove_ratio": 1 - macs_total / macs_full, "remove_ratio_attn": None,
                    "remove_ratio_mlp": None, "method_params": schedule["resolved_params"]}
        cache_sub = reused = None
        latency = {**latency, "macs_total": macs_total, "speedup_macs": macs_full / macs_total}
    else:
        cache_sub = len(schedule["cache_steps"]) * 2 * schedule["depth"]
        reused = sum(row.count("0") for row in schedule["compute"])
    rec = {
        **{k: cell[k] for k in ("model", "nfe", "method", "family", "lam", "theta", "seed", "match", "router", "sweep")},
        "model_label": m["label"], "paper_model": m["paper"], "sampler": m["sampler"], "cfg_scale": m["cfg_scale"],
        "nfe_sampled": schedule["nfe"], "policy": schedule["policy"], "schedule_source": schedule["source"],
        "depth": schedule["depth"], "cache_sublayers": cache_sub, "num_reused": reused,
        "remove_ratio": schedule["remove_ratio"], "remove_ratio_attn": schedule["remove_ratio_attn"],
        "remove_ratio_mlp": schedule["remove_ratio_mlp"],
        "macs_per_eval": latency["macs_per_eval"], "macs_total": latency["macs_total"], "macs_full": latency["macs_full"],
        "speedup_macs": latency["speedup_macs"],
        "latency_s": latency["latency_s"], "latency_full_s": latency["latency_full_s"], "speedup": latency["speedup"],
        "latency_batch": latency["batch"], "latency_repeats": latency["repeats"],
        "backend": evaluation["backend"], "feature_extractor": evaluation.get("feature_extractor"),
        "n_samples": evaluation["n_samples"], "n_ref": evaluation["n_ref"],
        "is": evaluation.get("inception_score"), "fid": evaluation.get("fid"), "sfid": evaluation.get("sfid"),
        "precision": evaluation.get("precision"), "recall": evaluation.get("recall"),
        "kid_mean": evaluation.get("kid_mean"), "kid_std": evaluation.get("kid_std"),
        "psnr_db": _num(paired.get("psnr_db")), "psnr_mean_db": paired.get("psnr_mean_db"), "mse": paired.get("mse_mean"),
        "paired_with": paired.get("paired_with"),
        "router_steps": router.get("steps") if router else None,
        "router_train_s": router.get("wall_time_s") if router else None,
        "routers_per_run": router.get("routers_trained_together", 1) if router else None,
        "sampling_seed": m["sampling"]["seed"], "device": env.get("device"), "device_name": env.get("device_name"),
        "dtype": env.get("dtype"), "torch": env.get("torch"), "git_revision": env.get("git_revision"),
        "threads": env.get("num_threads"),
        "caching": cell.get("caching"), "method_params": schedule.get("method_params"),
        "params": ", ".join(f"{k}={v}" for k, v in (cell.get("params") or {}).items()) if cell.get("caching") else None,
        "macs_source": "sampling (decisions taken)" if (samples or {}).get("method_macs_per_image") is not None else None,
    }
    return rec


def read_jsons(paths: Iterable[str | os.PathLike]) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]
