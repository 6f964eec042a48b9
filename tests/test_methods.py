"""The field's caching methods in the composable engine (l2c.caching): forecasts, residual units,
run-time policies with recorded decisions, token subsets, MACs of what each method computes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from l2c.cache import CacheEngine, CacheSchedule
from l2c.caching import (COMPUTE, FORECAST, REUSE, FAMILIES, MethodEngine, Plan, ResidualUnit, build_engine, macs_table)
from l2c.caching.calibrate import calibrate
from l2c.caching.methods.smoothcache import schedule_from_errors
from l2c.caching.methods.taylorseer import full_steps
from l2c.caching.methods.toca import full_step
from l2c.io import L2CError
from l2c.models import create_model
from l2c.sampling import sample

NFE = 8


def tiny(name: str = "DiT-Micro/2", seed: int = 0, std: float = 0.05) -> nn.Module:
    torch.manual_seed(seed)
    m = create_model(name, input_size=8, in_channels=1, num_classes=10)
    for p in m.parameters():
        nn.init.normal_(p, std=std)
    return m.eval()


def inputs(n: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(10, (n,), generator=g)


def run(model, engine=None, sampler="ddim", nfe=NFE, cfg=1.5):
    noise, labels = inputs()
    return sample(model, noise, labels, sampler=sampler, nfe=nfe, cfg_scale=cfg, engine=engine,
                  schedule=getattr(engine, "schedule", None))


@pytest.fixture(scope="module")
def dit():
    return tiny()


@pytest.fixture(scope="module")
def uvit():
    return tiny("U-ViT-Micro/2")


@pytest.fixture(scope="module")
def ref_ddim(dit):
    return run(dit)


# -- forecasts --------------------------------------------------------------------------------------

def test_forecast_order0_is_reuse_bit_for_bit(dit):
    e0 = build_engine(dit, "taylorseer", nfe=NFE, params={"interval": 3, "order": 0})
    reuse = e0.plan.branch.copy()
    reuse[reuse == FORECAST] = REUSE
    er = MethodEngine(dit, Plan(reuse))
    a, b = run(dit, e0), run(dit, er)
    assert torch.equal(a, b)
    # and REUSE is the static L2C engine's reuse: same mask through l2c.cache.CacheEngine
    sched = CacheSchedule(reuse == COMPUTE, cache_steps=list(range(1, NFE)))
    assert torch.equal(a, run(dit, CacheEngine(dit, sched)))
    assert not torch.equal(a, run(dit))  # the comparison is discriminating


class PolyBlock(nn.Module):
    """A block whose branches output w0 + w1 t + ... + wd t^d of the time it is given (float64)."""

    branch_modules = {"attn": ("lin",), "mlp": ("lin",)}

    def __init__(self, degree: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(2, degree + 1, 5, generator=g, dtype=torch.float64)
        self.lin = nn.Identity()

    def poly(self, s: int, t: torch.Tensor) -> torch.Tensor:
        return sum(self.w[s, i] * t ** i for i in range(self.w.shape[1]))

    def attn_branch(self, x, t):
        return self.poly(0, t)

    def mlp_branch(self, x, t):
        return self.poly(1, t)

    def forward(self, x, t):
        return x + self.attn_branch(x, t) + self.mlp_branch(x, t)


class PolyModel(nn.Module):
    def __init__(self, degree: int):
        super().__init__()
        self.blocks = nn.ModuleList([PolyBlock(degree, 0), PolyBlock(degree, 1)])

    def forward(self, x, t):
        for blk in self.blocks:
            x = blk(x, t)
        return x


@pytest.mark.parametrize("order", [1, 2, 3])
def test_newton_forecast_exact_on_polynomials_uneven_positions(order):
    model = PolyModel(order)
    times = [0.0, 0.7, 1.1, 2.0, 2.3, 3.9, 4.4, 5.0, 6.2]  # uneven, like DPM-Solver-2's evaluations
    branch = np.full((len(times), 2, 2), FORECAST, np.uint8)
    branch[: order + 1] = COMPUTE  # order + 1 computed points determine a degree-`order` polynomial
    eng = MethodEngine(model, Plan(branch, order=order, form="newton"), positions=times)
    with eng.installed():
        for k, t in enumerate(times):
            tt = torch.tensor(t, dtype=torch.float64)
            out = eng(model, torch.zeros(5, dtype=torch.float64), tt, step=k)
            exact = model(torch.zeros(5, dtype=torch.float64), tt)
            torch.testing.assert_close(out, exact, rtol=1e-9, atol=1e-9)
    assert eng.branch_calls.tolist() == [[order + 1] * 2] * 2


def test_taylorseer_ladder_exact_on_lines_only():
    """TaylorSeer's ladder divides every order by the last spacing and weighs x^i / i!: exact on
    features linear in the step, an O(spacing) approximation beyond (documented in docs/methods.md)."""
    for degree, exact in ((1, True), (2, False)):
        model = PolyModel(degree)
        branch = np.full((7, 2, 2), FORECAST, np.uint8)
        branch[:3] = COMPUTE
        eng = MethodEngine(model, Plan(branch, order=2, form="taylor"))
        with eng.installed():
            errs = []
            for k in range(7):
                tt = torch.tensor(float(k), dtype=torch.float64)
                errs.append(float((eng(model, torch.zeros(5, dtype=torch.float64), tt, step=k) - model(torch.zeros(5, dtype=torch.float64), tt)).abs().max()))
        assert (max(errs) < 1e-9) == exact, (degree, errs)


def test_taylorseer_full_steps_match_published_counts():
    assert len(full_steps(50, 3)) == 18 and len(full_steps(50, 5)) == 11  # 2.78x and 4.55x (peer-methods.md)
    assert full_steps(10, 3) == [0, 1, 4, 7]
    assert full_steps(6, 1) == list(range(6))


def test_taylorseer_time_variable_on_dpm2(uvit):
    e = build_engine(uvit, "taylorseer", nfe=NFE, sampler="dpm2", params={"interval": 2, "order": 2})
    assert e.plan.params["variable"] == "time" and e.positions[0] == 1.0 and e.positions[1] < 1.0
    out = run(uvit, e, sampler="dpm2", cfg=0.4)
    assert torch.isfinite(out).all()
    plan = Plan.from_dict(json.loads(json.dumps(e.recorded_plan().to_dict())))  # the times travel with the plan
    assert plan.positions == e.positions and torch.equal(run(uvit, MethodEngine(uvit, plan), sampler="dpm2", cfg=0.4), out)
    assert e.branch_calls[0, 0] == len(full_steps(NFE, 2)) * 2  # two guidance streams


# -- run-time policies ----------------------------------------------------------------------------

POLICIES = [("teacache", {"coefficients": [1.0, 0.0]}), ("fbcache", {}), ("dbcache", {"Fn": 1, "Bn": 1})]


@pytest.mark.parametrize("method,params", POLICIES)
def test_threshold_zero_computes_every_step_bit_for_bit(dit, ref_ddim, method, params):
    e = build_engine(dit, method, nfe=NFE, params={**params, "threshold": 0.0})
    assert torch.equal(run(dit, e), ref_ddim)
    assert all(d[0] for d in e.decisions.values()) and len(e.decisions) == NFE


@pytest.mark.parametrize("method,params", POLICIES)
def test_infinite_threshold_computes_exactly_the_guarded_steps(dit, method, params):
    extra = {} if method == "teacache" else {"warmup": 2, "max_consecutive": 2}
    e = build_engine(dit, method, nfe=NFE, params={**params, **extra, "threshold": float("inf")})
    run(dit, e)
    computed = [k for k in range(NFE) if e.decisions[k][0]]
    if method == "teacache":
        assert computed == [0, NFE - 1]
    else:  # warm-up 0, 1; then at most 2 reuses in a row; last step
        assert computed == [0, 1, 4, NFE - 1]


def test_uvit_teacache_threshold_zero_and_streams_follow_one_decision(uvit):
    ref = run(uvit, sampler="dpm2", cfg=0.4)
    e = build_engine(uvit, "teacache", nfe=NFE, sampler="dpm2", params={"threshold": 0.0, "coefficients": [1.0, 0.0]})
    assert torch.equal(run(uvit, e, sampler="dpm2", cfg=0.4), ref)
    e = build_engine(uvit, "teacache", nfe=NFE, sampler="dpm2", params={"threshold": 0.5, "coefficients": [1.0, 0.0]})
    run(uvit, e, sampler="dpm2", cfg=0.4)
    by_step = {}
    for c in e.calls:  # conditional (stream 0) and unconditional (stream 1) calls of a step agree
        by_step.setdefault(c["step"], set()).add(c["units"][0])
    assert all(len(v) == 1 for v in by_step.values()) and len(e.calls) == 2 * NFE


@pytest.mark.parametrize("method,params,sampler,model", [
    ("teacache", {"threshold": 0.3, "coefficients": [1.0, 0.0]}, "ddim", "dit"),
    ("fbcache", {"threshold": 0.45, "warmup": 1}, "ddim", "dit"),
    ("dbcache", {"threshold": 0.012, "Fn": 1, "warmup": 1}, "dpm2", "uvit"),
])
def test_recorded_decisions_replay_as_static_plan(request, tmp_path, method, params, sampler, model):
    m = request.getfixturevalue(model)
    cfg = 1.5 if model == "dit" else 0.4
    e = build_engine(m, method, nfe=NFE, sampler=sampler, params=params)
    a = run(m, e, sampler=sampler, cfg=cfg)
    rec = e.recorded_plan()
    assert 0 < rec.unit_compute[:, 0].sum() < NFE  # some steps reused: the replay is not trivial
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(rec.to_dict()))
    replay = build_engine(m, "plan", nfe=NFE, sampler=sampler, params={"plan": str(path)})
    b = run(m, replay, sampler=sampler, cfg=cfg)
    assert torch.equal(a, b)
    assert [c["macs"] for c in replay.calls] == [c["macs"] - (e.macs_table().signal if method == "teacache" else 0) for c in e.calls]


# -- token subsets, residual ranges, SmoothCache ------------------------------------------------

def test_toca_ratio_one_equals_uncached_and_partial_runs_fewer_tokens(dit, ref_ddim):
    e = build_engine(dit, "toca", nfe=NFE, params={"ratio": 1.0, "interval": 3})
    assert (e.plan.branch[..., 1] == 3).any()  # the token path is exercised
    assert torch.equal(run(dit, e), ref_ddim)
    e = build_engine(dit, "toca", nfe=NFE, params={"ratio": 0.2, "interval": 3})
    out = run(dit, e)
    assert not torch.equal(out, ref_ddim) and torch.isfinite(out).all()
    toca_steps = [k for k in range(NFE) if not full_step(k, NFE, 3)]
    assert toca_steps and all((e.plan.branch[k, :, 0] == REUSE).all() for k in toca_steps)
    counts = e.plan.tokens[toca_steps]
    assert counts.max() > 0 and (0 < counts).any() & (counts < 16).any()


def test_toca_scatter_keeps_stale_tokens():
    """The fresh tokens are the MLP of the current input, the others the cached values."""
    m = tiny()
    branch = np.zeros((2, 4, 2), np.uint8)
    branch[1, :, 0], branch[1, :, 1] = REUSE, 3
    tokens = np.zeros((2, 4), np.int64)
    tokens[1] = 5
    seen = {}
    eng = MethodEngine(m, Plan(branch, order=0, tokens=tokens, token_score={"soft_weight": 0.25, "age_scale": 3.0, "bonus": 0.8}),
                       observer=lambda k, st, b, s, out: seen.setdefault((k, b, s), out))
    x, y = inputs()
    t = torch.full((2,), 500)
    with eng.installed():
        eng(m, x, t, y, step=0)
        eng(m, x * 0.5, t - 100, y, step=1)
        for b in range(4):
            fresh = (eng.history[(0, b, 1)][1][0] != seen[(0, b, 1)]).any(dim=-1)  # (B, T) tokens that changed
            assert (fresh.sum(dim=1) == 5).all()
    assert eng.calls[1]["tokens"] == {b: 5 for b in range(4)}


def test_delta_dit_ranges_and_uvit_unit_rule(dit, uvit):
    e = build_engine(dit, "delta-dit", nfe=NFE)
    assert [(u.first, u.last) for u in e.plan.units] == [(0, 1), (2, 3)]
    assert e.plan.unit_compute[1].tolist() == [True, False] and e.plan.unit_compute[NFE - 1].tolist() == [False, True]
    run(dit, e)
    with pytest.raises(L2CError, match="symmetric"):
        MethodEngine(uvit, Plan(np.zeros((NFE, 5, 2), np.uint8), [ResidualUnit(1, 2)]))
    with pytest.raises(L2CError, match="U-ViT"):
        build_engine(uvit, "delta-dit", nfe=NFE)
    with pytest.raises(L2CError, match="toca does not apply to U-ViT"):
        build_engine(uvit, "toca", nfe=NFE, sampler="dpm2")


def test_smoothcache_schedule_and_calibration(tmp_path, dit, ref_ddim):
    err = np.full((2, 2, 5), np.nan)
    err[0, 0, 1:] = [0.1, 0.3, 0.1, 0.1]  # gap 1
    err[0, 1, 2:] = [0.15, 0.2, 0.3]  # gap 2
    err[1, :, :] = 1.0
    c = schedule_from_errors(err, alpha=0.18)
    assert c[:, 0].tolist() == [True, False, False, True, False] and c[:, 1].all()  # gap 2 used, gap 3 > max_gap
    path = tmp_path / "sc.json"
    calibrate(dit, "smoothcache", path, nfe=NFE, num_samples=2)
    rec = json.loads(path.read_text())
    assert len(rec["errors"][0][0]) == NFE and rec["errors"][0][0][0] is None
    e = build_engine(dit, "smoothcache", nfe=NFE, params={"alpha": 0.0}, calibration=str(path))
    assert torch.equal(run(dit, e), ref_ddim)  # alpha 0: nothing is below it
    e = build_engine(dit, "smoothcache", nfe=NFE, params={"alpha": 10.0}, calibration=str(path))
    assert (e.plan.branch == REUSE).any()


def test_teacache_calibration_fit_and_errors(tmp_path, dit):
    path = tmp_path / "tc.json"
    calibrate(dit, "teacache", path, nfe=NFE, num_samples=2)
    rec = json.loads(path.read_text())
    x, y = np.array(rec["input_change"]), np.array(rec["output_change"])
    assert len(x) == NFE - 1 and np.allclose(np.polyval(rec["coefficients"], x), y, atol=rec["fit_rmse"] * 10 + 1e-6)
    e = build_engine(dit, "teacache", nfe=NFE, params={"threshold": 0.2}, calibration=str(path))
    assert e.policy.coefficients == rec["coefficients"]
    with pytest.raises(L2CError, match="l2c calibrate --method teacache"):
        build_engine(dit, "teacache", nfe=NFE)
    with pytest.raises(L2CError, match="unknown parameter"):
        build_engine(dit, "taylorseer", nfe=NFE, params={"intervall": 3})
    with pytest.raises(L2CError, match="unknown caching method"):
        build_engine(dit, "taylorseers", nfe=NFE)
    with pytest.raises(L2CError, match="interval must be an integer"):
        build_engine(dit, "taylorseer", nfe=NFE, params={"interval": 0})


# -- MACs -------------------------------------------------------------------------------------------

def test_macs_table_hand_counted(dit):
    """DiT-Micro/2 on 8x8x1: D = 32, 4 blocks, 16 tokens, 2 output channels (learned sigma)."""
    D, T = 32, 16
    attn = D * 3 * D * T + D * D * T
    mlp = D * 4 * D * T + 4 * D * D * T
    ada = D * 6 * D
    embed = (2 * 2 * 1) * D * T + 256 * D + D * D  # patch conv, timestep MLP
    final = D * 2 * D + D * (2 * 2 * 2) * T
    mt = macs_table(dit)
    assert mt.branch.tolist() == [[attn, mlp]] * 4 and mt.block.tolist() == [attn + mlp + ada] * 4
    assert mt.per_eval == embed + 4 * (attn + mlp + ada) + final and mt.signal == ada and mt.tokens == T


class MacsCounter:
    """Linear / Conv MACs per image actually executed, per model call (forward hooks)."""

    def __init__(self, model):
        self.per_call, self.cur = [], 0
        self.handles = [m.register_forward_hook(self.hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]

    def hook(self, mod, args, out):
        if isinstance(mod, nn.Linear):
            self.cur += mod.in_features * out.numel() // out.shape[0]
        else:
            self.cur += int(np.prod(mod.kernel_size)) * mod.in_channels * out.numel() // out.shape[0]


@pytest.mark.parametrize("method,params", [
    ("taylorseer", {"interval": 3, "order": 2}), ("teacache", {"threshold": 0.3, "coefficients": [1.0, 0.0]}),
    ("fbcache", {"threshold": 0.45, "warmup": 1}), ("toca", {"ratio": 0.2, "interval": 3}), ("delta-dit", {}),
])
def test_recorded_macs_equal_executed_macs(dit, method, params):
    e = build_engine(dit, method, nfe=NFE, params=params)
    counter = MacsCounter(dit)
    inner = e.__call__

    def counted(model_call, *args, **kw):
        counter.cur = 0
        out = inner(model_call, *args, **kw)
        counter.per_call.append(counter.cur)
        return out
    noise, labels = inputs()
    try:
        e.__call__ = counted
        with e.installed(), torch.no_grad():
            from l2c.sampling import guided_model_fn
            fn = guided_model_fn(dit, counted, labels, 1.5)
            from l2c.diffusion import Diffusion, ddim_sample
            ddim_sample(fn, noise, Diffusion.create(NFE))
    finally:
        for h in counter.handles:
            h.remove()
    # the CFG batch is one call of 2N images; per image the executed MACs are the recorded ones
    assert counter.per_call == [c["macs"] for c in e.calls]
    assert sum(e.macs_per_step()) < NFE * e.macs_table().per_eval or method == "fbcache"


def test_every_family_is_documented_and_builds(dit):
    assert {"taylorseer", "teacache", "fbcache", "dbcache", "toca", "smoothcache", "delta-dit"} <= set(FAMILIES)
    for name, fam in FAMILIES.items():
        assert set(fam.doc) == set(fam.defaults), name


# -- CLI ----------------------------------------------------------------------------------------------

def test_cli_macs_method_matches_published_taylorseer_speedups(capsys):
    from l2c.cli import main
    for n, published in ((3, 2.77), (5, 4.53)):  # TaylorSeer README, DiT-XL/2 DDIM-50 (FLOPs)
        assert main(["macs", "--model", "DiT-XL/2", "--nfe", "50", "--method", "taylorseer",
                     "--method-params", json.dumps({"interval": n, "order": 3}), "--json"]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert abs(rep["macs_ideal_speedup"] - published) < 0.03
    assert main(["macs", "--model", "DiT-XL/2", "--nfe", "50", "--method", "teacache"]) == 2
    assert "decides at run time" in capsys.readouterr().err
    assert main(["macs", "--model", "DiT-XL/2", "--nfe", "50", "--method", "toca", "--method-params", "{bad"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    # each JSON flag is named in its own error (one parser for --method-params and --model-kwargs)
    assert main(["calibrate", "--method", "teacache", "--nfe", "4", "--model-kwargs", "[1]"]) == 2
    assert "--model-kwargs '[1]': expected a JSON object" in capsys.readouterr().err


def test_cli_calibrate_then_bench_reads_it_beside_the_checkpoint(tmp_path, capsys):
    from conftest import make_tiny
    from l2c.cli import main
    ckpt = make_tiny(tmp_path / "tiny.pt")
    common = ["--checkpoint", str(ckpt), "--nfe", "6"]
    assert main(["bench", *common, "--method", "teacache", "--batch", "1", "--repeats", "1", "--warmup", "0"]) == 2
    assert "l2c calibrate --method teacache" in capsys.readouterr().err
    assert main(["calibrate", "--method", "teacache", *common, "--num-samples", "2"]) == 0
    assert (tmp_path / "tiny.teacache.json").exists()
    out = tmp_path / "bench.json"
    assert main(["bench", *common, "--method", "teacache", "--method-params", '{"threshold": 0.5}', "--batch", "1",
                 "--repeats", "1", "--warmup", "0", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    plan = Plan.from_dict(res["recorded_plan"])
    assert len(res["macs_per_step"]) == 6 and res["macs_total"] <= res["macs_total_full"] + 6 * macs_table(tiny()).signal
    assert plan.unit_compute[0, 0] and plan.unit_compute[5, 0]


def test_cli_sample_with_method_equals_python_api(tmp_path):
    from conftest import make_tiny
    from l2c.cli import main
    from l2c.data import float_to_uint8
    from l2c.generate import noise_and_labels
    from l2c.models import load_model
    ckpt = make_tiny(tmp_path / "tiny.pt")
    out = tmp_path / "ts.npz"
    assert main(["sample", "--out", str(out), "--checkpoint", str(ckpt), "--nfe", "6", "--num-samples", "3",
                 "--batch-size", "3", "--shard-size", "3", "--method", "taylorseer",
                 "--method-params", '{"interval": 2, "order": 1}', "--no-progress"]) == 0
    model = load_model(ckpt)
    noise, labels = noise_and_labels(0, np.arange(3), (1, 8, 8), 10)
    eng = build_engine(model, "taylorseer", nfe=6, params={"interval": 2, "order": 1})
    x = sample(model, noise, labels, nfe=6, cfg_scale=1.5, engine=eng)
    with np.load(out) as f:
        assert np.array_equal(f["arr_0"], float_to_uint8(x))
    rec = json.loads(out.with_suffix(".json").read_text())
    assert rec["method_macs_per_image"] == sum(eng.macs_per_step()) < 6 * eng.macs_table().per_eval
    assert main(["sample", "--out", str(tmp_path / "x.npz"), "--checkpoint", str(ckpt), "--nfe", "6", "--num-samples", "3",
                 "--method", "teacache", "--no-progress"]) == 2
