# Config validation, the planned cells, path helpers and input functions.
# All grid logic lives in l2c/cells.py (plain Python, no torch at parse time); this file only
# turns it into Snakemake inputs and params.
import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from l2c import cells, rehearsal
from analysis import tables as atables

try:  # one line naming the key path (snakemake's validate below prints the schema's internals)
    cells.check_schema(config, Path(workflow.current_basedir) / "../schemas/config.schema.yaml")
except cells.ConfigError as e:
    raise WorkflowError(f"invalid config: {e}") from None
validate(config, "../schemas/config.schema.yaml", set_default=False)
try:
    CFG = cells.resolve(config)
    CELLS = cells.plan(CFG)
except cells.ConfigError as e:
    raise WorkflowError(f"invalid config: {e}") from None

# a rehearsal config (config/rehearsal.yaml) makes its stand-in inputs itself (workflow/rules/rehearsal.smk)
try:
    STANDIN_PLAN = rehearsal.standin_plan(CFG) if CFG.get("rehearsal") else {}
except cells.ConfigError as e:
    raise WorkflowError(f"invalid config: {e}") from None
STANDINS = {e["path"] for entries in STANDIN_PLAN.values() for e in entries}
MISSING = [f for f in cells.missing_files(CFG) if f[1] not in STANDINS]
CHECK_FILES = CFG["check_files"]
if MISSING and CHECK_FILES:
    raise WorkflowError(cells.missing_message(MISSING))

# a --use-conda environment installs this checkout (workflow/envs/l2c.post-deploy.sh)
os.environ.setdefault("L2C_REPO", str(Path(workflow.basedir)))

R = CFG["results"]  # data, tables, figures
W = CFG["work"]  # samples, routers, checkpoints, logs, benchmarks
ENV = "../envs/l2c.yaml"
THREADS = CFG["threads"]
DEVICE = CFG["device"]
GPU = 0 if DEVICE == "cpu" else 1  # resources: gpu=GPU (the default profile limits gpu=1)
SAMPLE_JOBS = CFG["sample_jobs"]


def total_cores():
    try:
        return workflow.cores
    except WorkflowError:  # --report and dry runs without --cores
        return 1


def latency_cores(wildcards):
    """Timing hygiene on CPU: a latency job reserves every core so nothing runs beside it (torch still
    uses THREADS) unless its row's ``latency.exclusive`` is false; on a GPU the gpu=1 limit already
    keeps it alone on the device."""
    if GPU == 0 and CFG["models"][wildcards.model]["latency"]["exclusive"]:
        return max(total_cores(), THREADS)
    return THREADS


PAPER_RESULTS = atables.PAPER_RESULTS  # published numbers (analysis/paper_results.csv)
TABLE_NOTE = ("REHEARSAL (config/rehearsal.yaml): random stand-in weights and inputs at toy scale, so our numbers are "
              "meaningless; the paper columns show where each published value sits." if CFG.get("rehearsal") else "")

CELL = {(c.model, c.nfe, c.method): c for c in CELLS}
ROUTERS = {(m, n, cells.router_id(o, lam)): (o, lam) for m, n, o, lam in cells.routers(CFG)}
ROUTER_PASSES = cells.router_passes(CFG)  # (model, nfe, rid) -> the rids its job trains, the first trains them
NFES = [(c.model, c.nfe) for c in CELLS if c.family == "full"]


wildcard_constraints:
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    nfe=r"[0-9]+",
    method=r"[A-Za-z0-9][A-Za-z0-9_.+-]*",
    rid=r"(cache|drop|trajectory)-lam[0-9.eE+-]+",
    calib=r"[a-z0-9-]+",
    part=r"[0-9]+",
    table=r"[a-z0-9-]+",


# -- lookups --------------------------------------------------------------------------------------


def cell_of(wildcards):
    key = (wildcards.model, int(wildcards.nfe), wildcards.method)
    if key not in CELL:
        raise WorkflowError(f"no cell {'/'.join(map(str, key))} in this config")
    return CELL[key]


def row(wildcards):
    return CFG["models"][wildcards.model]


def external(path):
    """An input the workflow cannot make (or, in a rehearsal, makes as a stand-in): declared only when
    files are checked (dry runs may skip) or when a rehearsal rule makes it."""
    return [path] if CHECK_FILES or path in STANDINS else []


def spec(wildcards, *keys):
    """The part of a model row a stage depends on (params: editing other keys re-runs nothing)."""
    m = row(wildcards)
    base = ("checkpoint", "model", "model_kwargs", "sampler", "cfg_scale", "cfg_channels")
    return {k: m[k] for k in base + keys}


def model_spec(wildcards):
    return spec(wildcards)


def pretrain_spec(wildcards):
    return row(wildcards)["pretrain"]


def router_spec(wildcards):
    return spec(wildcards, "data")


def sample_spec(wildcards):
    return spec(wildcards, "vae", "sampling")


def latency_spec(wildcards):
    return spec(wildcards, "latency")


def record_spec(wildcards):
    return spec(wildcards, "label", "paper", "sampling")


def cell_dir(c):
    return f"{c.model}/nfe{c.nfe}"


# -- input functions ------------------------------------------------------------------------------


def checkpoint_of(wildcards):
    m = row(wildcards)
    return [m["checkpoint"]] if m["pretrain"] else external(m["checkpoint"])


def reference_of(wildcards):
    m = row(wildcards)
    return m["reference"] if cells.is_digits_reference(CFG, m) else external(m["reference"])


def router_data(wildcards):
    kind, _, arg = row(wildcards)["data"].partition(":")
    return external(arg) if kind in ("latents", "folder") else []


def router_file(c):
    if c.router == "official":
        return external(CFG["models"][c.model]["nfe"][c.nfe]["official_router"])
    return [f"{W}/{cell_dir(c)}/routers/{c.router}/router.pt"]


def schedule_inputs(wildcards):
    c = cell_of(wildcards)
    inputs = {"ckpt": checkpoint_of(wildcards)}
    if c.router:
        inputs["router"] = router_file(c)
    if c.match:
        inputs["match"] = f"{R}/{cell_dir(c)}/schedules/{c.match}.json"
    if c.family == "metrics":
        inputs["profile"] = f"{R}/{cell_dir(c)}/profile.csv"
    if c.calibration:  # a caching method that needs its calibration pass (l2c calibrate)
        inputs["calibration"] = f"{W}/{cell_dir(c)}/calibration/{c.calibration}.json"
    return inputs


def shard_inputs(wildcards):
    """What computing samples reads: checkpoint, schedule (or method spec) and the row's autoencoder."""
    inputs = {"ckpt": checkpoint_of(wildcards), "schedule": f"{R}/{wildcards.model}/nfe{wildcards.nfe}/schedules/{wildcards.method}.json"}
    vae = row(wildcards)["vae"]
    if vae:
        inputs["vae"] = external(vae)
    return inputs


def sample_inputs(wildcards):
    inputs = shard_inputs(wildcards)
    if SAMPLE_JOBS > 1:
        inputs["parts"] = [f"{W}/{wildcards.model}/nfe{wildcards.nfe}/samples/{wildcards.method}.part{p}.done" for p in range(SAMPLE_JOBS)]
    return inputs


def eval_inputs(wildcards):
    d = f"{W}/{wildcards.model}/nfe{wildcards.nfe}/samples"
    inputs = {"samples": f"{d}/{wildcards.method}.npz", "ref": reference_of(wildcards), "weights": inception_weights(wildcards)}
    if wildcards.method != "full":
        inputs["full"] = f"{d}/full.npz"
    return inputs


def inception_weights(wildcards):
    """The Inception weights file of an inception-adm row when the config names one (default:
    torch-fidelity's place under $TORCH_HOME, found by l2c evaluate itself)."""
    w = CFG.get("inception_weights")
    return external(w) if w and row(wildcards)["backend"] == "inception-adm" else []


def weights_arg(wildcards, input):
    return f"--weights {input.weights}" if "weights" in input.keys() and input.weights else ""


def paired_arg(wildcards, input):
    return f"--paired-with {input.full}" if "full" in input.keys() else ""


def device_arg(wildcards):
    return "" if DEVICE == "cpu" else f"--device {DEVICE}"


def cell_inputs(wildcards):
    c = cell_of(wildcards)
    d = f"{R}/{cell_dir(c)}"
    inputs = {"schedule": f"{d}/schedules/{c.method}.json", "eval": f"{d}/eval/{c.method}.json",
              "latency": f"{d}/latency.json"}
    if c.router and c.router != "official":
        inputs["router"] = f"{d}/routers/{c.router}.json"
    if c.family == "method":  # MACs of the decisions its sampling runs took
        inputs["samples"] = f"{W}/{cell_dir(c)}/samples/{c.method}.json"
    return inputs


def latency_inputs(wildcards):
    """The checkpoint and the schedule (or method spec) of every cell of this model and NFE."""
    key = (wildcards.model, int(wildcards.nfe))
    scheds = sorted(f"{R}/{cell_dir(c)}/schedules/{c.method}.json" for c in CELLS if (c.model, c.nfe) == key)
    if not scheds:
        raise WorkflowError(f"no cell of {wildcards.model} at NFE {wildcards.nfe} in this config")
    return {"ckpt": checkpoint_of(wildcards), "schedules": scheds}


def router_pass(wildcards):
    """A router trained in another router's job: that job's router, as an order only (``ancient``:
    a rerun of that job, which leaves the others' files alone, does not rerun this one). The job
    then writes its files from the checkpoint that job left (or trains alone without one)."""
    first = ROUTER_PASSES[(wildcards.model, int(wildcards.nfe), wildcards.rid)][0]
    return [] if first == wildcards.rid else [ancient(f"{W}/{wildcards.model}/nfe{wildcards.nfe}/routers/{first}/router.pt")]


def router_params(wildcards):
    model, nfe, rid = wildcards.model, int(wildcards.nfe), wildcards.rid
    objective, lam = ROUTERS[(model, nfe, rid)]
    opts = cells.router_options(CFG["models"][model], nfe, objective)
    rids = ROUTER_PASSES[(model, nfe, rid)]
    companions = [(*ROUTERS[(model, nfe, r)], f"{W}/{model}/nfe{nfe}/routers/{r}") for r in rids[1:]] if rids[0] == rid else []
    return {"objective": objective, "lam": lam, "opts": opts, "companions": companions}


def main_router(model, nfe):
    s = CFG["models"][model]["nfe"][nfe]
    return cells.router_id("cache", s["lambda"]) if s["lambda"] is not None else None


def grid_cells(wildcards):
    """Fig. 7 rows: per family in figures.grid_methods, the main-lambda cell (first seed)."""
    model, nfe = wildcards.model, int(wildcards.nfe)
    s = CFG["models"][model]["nfe"][nfe]
    out = []
    for fam in CFG["figures"]["grid_methods"]:
        cands = [c for c in CELLS if c.model == model and c.nfe == nfe and c.family == fam and not c.sweep
                 and c.lam in (None, s["lambda"]) and c.seed in (None, CFG["random_seeds"][0])]
        out += cands[:1]
    return out


def grid_methods(wildcards):
    return [c.method for c in grid_cells(wildcards)]


def grid_families(wildcards):
    return [c.family for c in grid_cells(wildcards)]


def grid_samples(wildcards):
    d = f"{W}/{wildcards.model}/nfe{wildcards.nfe}/samples"
    return [f"{d}/{m}.npz" for m in grid_methods(wildcards)]


def sampler_of(wildcards):
    return row(wildcards)["sampler"]


def standin_regex(kind, layout=None):
    """The stand-in paths of a kind as a wildcard constraint (a rehearsal rule makes exactly these)."""
    paths = [e["path"] for e in STANDIN_PLAN.get(kind, []) if layout is None or e.get("layout") == layout]
    return "|".join(re.escape(p) for p in paths) if paths else "(?!)"


def latents_entry(wildcards):
    return next(e for e in STANDIN_PLAN["latents"] if e["path"] == wildcards.latents)


# -- targets --------------------------------------------------------------------------------------

CELL_JSONS = [f"{R}/{cell_dir(c)}/cells/{c.method}.json" for c in CELLS]
TABLES = atables.tables_for([c.to_dict() | {"sampler": CFG["models"][c.model]["sampler"]} for c in CELLS])


def figure_targets():
    figs = []
    for model, nfe in NFES:
        s = CFG["models"][model]["nfe"][nfe]
        stem = f"{model}-nfe{nfe}"
        figs += [f"fig3-redundancy-{stem}", f"fig7-samples-{stem}"]
        if s["heuristics"] or s["fewer_lambdas"]:
            figs.append(f"fig4-matched-{stem}")
        if s["lambda"] is not None:
            figs.append(f"fig5-router-{stem}-{main_router(model, nfe)}")
        if len(set(s["thetas"]) | {s["theta"]}) > 1 and s["lambda"] is not None:
            figs.append(f"fig6-theta-{stem}")
        if s["trajectory_lambdas"]:
            figs.append(f"fig8-speedup-{stem}")
        if s["methods"]:
            figs.append(f"fig9-methods-{stem}")
    return [f"{R}/figures/{f}.{ext}" for f in figs for ext in ("png", "pdf", "json")]


def all_targets():
    tables = [f"{R}/tables/{t}.{ext}" for t in TABLES for ext in ("csv", "md", "tex")]
    return CELL_JSONS + [f"{R}/cells.csv"] + tables + figure_targets()


def cell_dict(wildcards):
    return cell_of(wildcards).to_dict()


def backend_of(wildcards):
    return row(wildcards)["backend"]


def latency_dtype(wildcards):
    return CFG["dtype"]


def model_label(wildcards):
    return row(wildcards)["label"]


def main_theta(wildcards):
    return row(wildcards)["nfe"][int(wildcards.nfe)]["theta"]


def main_lambda(wildcards):
    return row(wildcards)["nfe"][int(wildcards.nfe)]["lambda"]
