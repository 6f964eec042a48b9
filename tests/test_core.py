"""Core engine: DiT family, DDIM, the layer-cache engine, schedules and MACs (issue 2)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from l2c.cache import CacheEngine, CacheSchedule, default_cache_steps
from l2c.diffusion import Diffusion, space_timesteps
from l2c.io import L2CError
from l2c.macs import macs_for
from l2c.models import cacheable_blocks, create_model, load_model, load_weights
from l2c.models.dit import modulate
from l2c.sampling import sample
from conftest import needs_compiler

ROUTERS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "official-routers"
needs_routers = pytest.mark.skipif(not ROUTERS.is_dir(), reason=f"official router files not found at {ROUTERS} (../shared is absent)")


def tiny_model(depth_name: str = "DiT-Micro/2", seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    m = create_model(depth_name, input_size=8, in_channels=kw.pop("in_channels", 2), num_classes=5, **kw)
    for p in m.parameters():  # randomise everything: DiT's adaLN-Zero init makes outputs trivially zero
        nn.init.normal_(p, std=0.1)
    return m.eval()


def inputs(n: int = 3, ch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, ch, 8, 8, generator=g), torch.randint(5, (n,), generator=g)


def assert_close_fp32_reassociation(out: torch.Tensor, ref: torch.Tensor, model: nn.Module, nfe: int) -> None:
    """Compiled vs eager fp32: kernels may sum in another order (fused, vectorised, blocked), so each
    dot product of length K can differ by about K * eps32 relative to its magnitude, and a sampler
    carries such differences through every block of every step. The bound is that worst case,
    ``eps32 * K * depth * nfe``, taken relative to the output's largest magnitude (element-wise
    relative bounds fail on outputs near zero). It still catches any real difference: a wrong branch
    or a skipped block moves the samples by O(1) of their scale, orders of magnitude above it."""
    eps = torch.finfo(torch.float32).eps
    width = max(p.shape[-1] for p in model.parameters() if p.dim() == 2)
    bound = eps * width * len(model.blocks) * nfe
    err = ((out - ref).abs().max() / ref.abs().max()).item()
    assert err <= bound, f"compiled vs eager: max |diff| / max |ref| = {err:.3g} > {bound:.3g}"


# -- models ---------------------------------------------------------------------------------------

def test_official_sizes_and_keys():
    with torch.device("meta"):
        m = create_model("DiT-XL/2", input_size=32)
    sd = m.state_dict()
    assert sum(p.numel() for p in m.parameters()) == 675_129_632  # DiT-XL/2 256 parameter count
    assert sd["y_embedder.embedding_table.weight"].shape == (1001, 1152)
    assert sd["pos_embed"].shape == (1, 256, 1152)
    for key in ["x_embedder.proj.weight", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.bias", "blocks.27.attn.qkv.weight",
                "blocks.0.attn.proj.bias", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.bias", "blocks.3.adaLN_modulation.1.weight",
                "final_layer.linear.weight", "final_layer.adaLN_modulation.1.bias"]:
        assert key in sd
    assert m.out_channels == 8 and len(m.blocks) == 28
    for name, depth, hidden in [("DiT-L/4", 24, 1024), ("DiT-B/8", 12, 768), ("DiT-S/2", 12, 384)]:
        with torch.device("meta"):
            m = create_model(name, input_size=32)
        assert (len(m.blocks), m.hidden_size) == (depth, hidden)


def test_pos_embed_layout():
    """Token (r, c): the first half of the channels encodes the column, the second the row."""
    m = create_model("DiT-Micro/2", input_size=8, in_channels=1, num_classes=3)
    pe = m.pos_embed[0].numpy()  # (16, 32), 4x4 grid
    D = pe.shape[1]
    # sin(0)=0 / cos(0)=1 in the first frequency of the column half when c = 0
    for r in range(4):
        assert pe[r * 4 + 0, 0] == 0.0 and pe[r * 4 + 0, D // 4] == 1.0
        assert pe[0 * 4 + r, D // 2] == 0.0 and pe[0 * 4 + r, D // 2 + D // 4] == 1.0
    assert pe[1, 0] == pytest.approx(np.sin(1.0)) and pe[4, D // 2] == pytest.approx(np.sin(1.0))


def test_unknown_model_and_bad_state_dict(tmp_path):
    with pytest.raises(L2CError, match="unknown model name 'DiT-XXL/2'.*did you mean"):
        create_model("DiT-XXL/2")
    m = tiny_model()
    torch.save(m.state_dict(), tmp_path / "ok.pt")
    other = create_model("DiT-Micro/2", input_size=8, in_channels=2, num_classes=7)
    with pytest.raises(L2CError, match="y_embedder.embedding_table.weight: file \\(6, 32\\) vs model \\(8, 32\\).*num_classes"):
        load_weights(other, tmp_path / "ok.pt")
    sd = m.state_dict()
    sd.pop("blocks.0.attn.qkv.weight")
    torch.save(sd, tmp_path / "missing.pt")
    with pytest.raises(L2CError, match="1 missing keys"):
        load_weights(tiny_model(), tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(L2CError, match="corrupt.pt: cannot be read.*delete it"):
        load_weights(tiny_model(), tmp_path / "corrupt.pt")
    with pytest.raises(L2CError, match="does not record its architecture"):
        load_model(tmp_path / "ok.pt")
    loaded = load_model(tmp_path / "ok.pt", "DiT-Micro/2", input_size=8, in_channels=2, num_classes=5)
    x, y = inputs()
    t = torch.tensor([10, 500, 999])
    assert torch.equal(loaded(x, t, y), m(x, t, y))


# -- diffusion ------------------------------------------------------------------------------------

def test_respacing_any_nfe():
    assert space_timesteps(1000, 1) == [0]
    assert space_timesteps(1000, 1000) == list(range(1000))
    for nfe in (7, 9, 10, 20, 50, 250):
        ts = space_timesteps(1000, nfe)
        assert len(ts) == nfe and ts[0] == 0 and ts[-1] == 999
    # Python (banker's) rounding of the accumulated stride, as the ADM code: 999/19 * k
    assert space_timesteps(1000, 20)[:4] == [0, 53, 105, 158]
    d = Diffusion.create(20)
    base = Diffusion.create()
    np.testing.assert_allclose(d.alphas_cumprod, base.alphas_cumprod[d.timestep_map], rtol=1e-12)
    with pytest.raises(L2CError, match="NFE must be between"):
        space_timesteps(1000, 0)


def test_ddim_exact_for_exact_eps():
    """With the true eps of a single data point, DDIM recovers that point for any NFE."""
    x0 = torch.full((1, 1, 2, 2), 0.3)
    for nfe in (5, 20):
        d = Diffusion.create(nfe)
        acp = torch.from_numpy(Diffusion.create().alphas_cumprod).float()

        def model_fn(x, t, step):
            a = acp[t].reshape(-1, 1, 1, 1)
            return (x - a.sqrt() * x0) / (1 - a).sqrt()
        from l2c.diffusion import ddim_sample
        out = ddim_sample(model_fn, torch.randn(1, 1, 2, 2), d)
        torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


# -- cache engine ---------------------------------------------------------------------------------

def reference_l2c(model, noise, labels, nfe, cfg_scale, schedule):
    """An independent, naive L2C inference: block internals written out, explicit per-step caches."""
    d = Diffusion.create(nfe)
    coef = d.ddim_coefficients("cpu")
    ts = d.model_timesteps()
    x = noise
    cache = {}
    y2 = torch.cat([labels, torch.full_like(labels, model.num_classes)])
    for k in range(nfe):
        i = nfe - 1 - k
        xx = torch.cat([x, x])
        t = ts[i].expand(xx.shape[0])
        h = model.x_embedder(xx) + model.pos_embed
        c = model.t_embedder(t) + model.y_embedder(y2, False)
        for b, blk in enumerate(model.blocks):
            sh1, sc1, g1, sh2, sc2, g2 = blk.adaLN_modulation(c).chunk(6, dim=1)
            if schedule.compute[k, b, 0]:
                cache[b, 0] = blk.attn(modulate(blk.norm1(h), sh1, sc1))
            h = h + g1.unsqueeze(1) * cache[b, 0]
            if schedule.compute[k, b, 1]:
                cache[b, 1] = blk.mlp(modulate(blk.norm2(h), sh2, sc2))
            h = h + g2.unsqueeze(1) * cache[b, 1]
        out = model.unpatchify(model.final_layer(h, c))
        cond, uncond = out.chunk(2)
        C = x.shape[1]
        eps = uncond[:, :C] + cfg_scale * (cond[:, :C] - uncond[:, :C])
        x, _ = d.ddim_step(x, eps, i, coef)
    return x


def random_schedule(nfe, depth, p=0.5, seed=0, sampler="ddim"):
    rng = np.random.RandomState(seed)
    steps = default_cache_steps(nfe, sampler)
    flat = np.ones((nfe, 2 * depth), bool)
    for k in steps:
        flat[k] = rng.rand(2 * depth) > p
    return CacheSchedule.from_mask(flat, steps, source="test")


@pytest.mark.parametrize("nfe", [6, 7])
def test_cached_sampling_matches_naive_reference(nfe):
    m = tiny_model()
    noise, labels = inputs()
    sched = random_schedule(nfe, len(m.blocks))
    assert 0 < sched.num_reused
    with torch.no_grad():
        ref = reference_l2c(m, noise, labels, nfe, 1.5, sched)
    out = sample(m, noise, labels, nfe=nfe, cfg_scale=1.5, schedule=sched)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    full = sample(m, noise, labels, nfe=nfe, cfg_scale=1.5)
    assert (out - full).abs().max() > 1e-4  # the schedule did change the result


def test_cache_disabled_is_bit_identical_and_full_schedule_equals_none():
    m = tiny_model()
    noise, labels = inputs()
    t = torch.tensor([3, 400, 999])
    plain = m(noise, t, labels)
    engine = CacheEngine(m, CacheSchedule.full(5, len(m.blocks)))
    with engine.installed():
        assert torch.equal(engine(m, noise, t, labels, step=0, mode="off"), plain)
        assert torch.equal(engine(m, noise, t, labels, step=0), plain)
    a = sample(m, noise, labels, nfe=5, cfg_scale=2.0)
    b = sample(m, noise, labels, nfe=5, cfg_scale=2.0, schedule=CacheSchedule.full(5, len(m.blocks)))
    assert torch.equal(a, b)


def count_branch_calls(model):
    counts = {}
    hooks = []
    for b, blk in enumerate(model.blocks):
        for name in ("attn", "mlp"):
            counts[b, name] = 0

            def hook(mod, args, out, key=(b, name)):
                counts[key] += 1
            hooks.append(getattr(blk, name).register_forward_hook(hook))
    return counts, hooks


def test_all_reuse_schedule_never_calls_reused_branches():
    m = tiny_model()
    nfe = 8
    steps = default_cache_steps(nfe)
    flat = np.ones((nfe, 2 * len(m.blocks)), bool)
    flat[steps] = False
    sched = CacheSchedule.from_mask(flat, steps)
    counts, hooks = count_branch_calls(m)
    noise, labels = inputs()
    sample(m, noise, labels, nfe=nfe, cfg_scale=1.5, schedule=sched)
    for h in hooks:
        h.remove()
    assert set(counts.values()) == {nfe - len(steps)}  # each branch runs only in the 4 full steps


def test_cache_steps_and_drop_policy():
    assert default_cache_steps(20) == list(range(1, 20, 2))
    assert default_cache_steps(7) == [1, 3, 5]
    assert default_cache_steps(20, "dpm2") == list(range(2, 19, 2))
    m = tiny_model()
    steps = default_cache_steps(4)
    flat = np.ones((4, 2 * len(m.blocks)), bool)
    flat[steps, 0] = False  # block 0 attention skipped in cache steps
    drop = CacheSchedule.from_mask(flat, steps, policy="drop")
    assert not CacheEngine._store_plan(drop).any()  # a dropping schedule stores nothing
    cache = CacheSchedule.from_mask(flat, steps)
    noise, labels = inputs()
    a = sample(m, noise, labels, nfe=4, schedule=drop)
    b = sample(m, noise, labels, nfe=4, schedule=cache)
    assert not torch.allclose(a, b)
    with pytest.raises(L2CError, match="step 0 must compute everything"):
        bad = np.ones((4, 2 * len(m.blocks)), bool)
        bad[0, 3] = False
        CacheSchedule.from_mask(bad, [0, 1, 3])
    with pytest.raises(L2CError, match="not cache steps"):
        bad = np.ones((4, 2 * len(m.blocks)), bool)
        bad[2, 3] = False
        CacheSchedule.from_mask(bad, [1, 3])


def test_engine_releases_memory_and_overrides():
    m = tiny_model()
    sched = random_schedule(6, len(m.blocks), seed=3)
    engine = CacheEngine(m, sched)
    noise, labels = inputs()
    with engine.installed():
        assert "attn_branch" in m.blocks[0].__dict__
        from l2c.sampling import guided_model_fn
        from l2c.diffusion import ddim_sample
        ddim_sample(guided_model_fn(m, engine, labels, 1.5), noise, Diffusion.create(6))
        assert engine.cache  # holds tensors while installed
    assert not engine.cache
    assert all("attn_branch" not in blk.__dict__ and "mlp_branch" not in blk.__dict__ for blk in m.blocks)
    # Only what a later step reuses is stored: the last step stores nothing
    assert not engine._store_plan(sched)[-1].any()
    # The same model samples identically twice: nothing leaks between batches
    a = sample(m, noise, labels, nfe=6, cfg_scale=1.5, schedule=sched)
    b = sample(m, noise, labels, nfe=6, cfg_scale=1.5, schedule=sched)
    assert torch.equal(a, b)


def test_schedule_save_load_roundtrip_and_errors(tmp_path):
    sched = random_schedule(7, 4, seed=5)
    sched.theta, sched.model = 0.3, "DiT-Micro/2"
    sched.save(tmp_path / "s.json")
    back = CacheSchedule.load(tmp_path / "s.json")
    assert np.array_equal(back.compute, sched.compute) and back.cache_steps == sched.cache_steps
    assert (back.theta, back.model, back.nfe, back.depth) == (0.3, "DiT-Micro/2", 7, 4)
    d = json.loads((tmp_path / "s.json").read_text())
    assert d["format"] == "l2c-suite/cache-schedule" and len(d["compute"][1]) == 8
    (tmp_path / "bad.json").write_text("{\"format\": \"something\"}")
    with pytest.raises(L2CError, match="bad.json: not a cache schedule"):
        CacheSchedule.load(tmp_path / "bad.json")
    (tmp_path / "trunc.json").write_text(json.dumps(d)[:50])
    with pytest.raises(L2CError, match="trunc.json: not valid JSON"):
        CacheSchedule.load(tmp_path / "trunc.json")
    m = tiny_model()  # 4 blocks: fits; wrong NFE and depth are refused
    noise, labels = inputs()
    with pytest.raises(L2CError, match="has 7 steps but sampling uses NFE 8"):
        sample(m, noise, labels, nfe=8, schedule=back)
    deep = create_model("DiT-Micro/2", input_size=8, in_channels=2, num_classes=5)
    deep.blocks.append(deep.blocks[0])
    with pytest.raises(L2CError, match="4 blocks .* has 5"):
        sample(deep, noise, labels, nfe=7, schedule=back)


# -- official routers and MACs --------------------------------------------------------------------

@needs_routers
@pytest.mark.parametrize("name,theta,ratios", [
    ("DDIM50_router.pt", 0.1, (47.43, 47.00, 47.85)),
    ("DDIM20_router.pt", 0.1, (44.29, 43.93, 44.64)),
    ("dpm50_router.pth", 0.9, (93.68, 93.25, 94.11)),
    ("dpm20_router.pth", 0.9, (63.79, 60.54, 67.05)),
])
def test_official_router_ratios(name, theta, ratios):
    s = CacheSchedule.from_official_router(ROUTERS / name, theta)
    r = s.remove_ratio()
    got = (100 * r["remove_ratio"], 100 * r["remove_ratio_attn"], 100 * r["remove_ratio_mlp"])
    assert got == pytest.approx(ratios, abs=0.01)  # the paper truncates to 2 decimals


@needs_routers
def test_official_router_structure():
    s = CacheSchedule.from_official_router(ROUTERS / "DDIM20_router.pt", 0.1)
    assert s.nfe == 20 and s.depth == 28 and s.cache_steps == list(range(1, 20, 2))
    # Early (noisy) cache steps reuse almost everything, late ones almost nothing (official i = 18 vs 0).
    assert (~s.compute[1]).sum() == 56 and (~s.compute[19]).sum() == 0
    with pytest.raises(L2CError, match="56 sub-layers\\) but DiT has 4"):
        s.check_model(tiny_model())


def test_corrupt_router_file(tmp_path):
    (tmp_path / "r.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(L2CError, match="router file .*r.pt: cannot be read"):
        CacheSchedule.from_official_router(tmp_path / "r.pt", 0.1)
    torch.save({"something": 1}, tmp_path / "r2.pt")
    with pytest.raises(L2CError, match="not an official router"):
        CacheSchedule.from_official_router(tmp_path / "r2.pt", 0.1)


@needs_routers
@pytest.mark.parametrize("nfe,router,paper_t", [(50, None, 5.72), (50, "DDIM50_router.pt", 4.36), (20, None, 2.29), (20, "DDIM20_router.pt", 1.78)])
def test_macs_match_paper(nfe, router, paper_t):
    rep = macs_for("DiT-XL/2", image_size=256, sampler="ddim", nfe=nfe, router=router and str(ROUTERS / router), theta=0.1)
    assert rep["macs_total"] / 1e12 == pytest.approx(paper_t, rel=0.005)
    assert rep["macs_per_eval_full"] / 1e9 == pytest.approx(114.4, rel=0.005)


def test_macs_other_rows():
    assert macs_for("DiT-XL/2", image_size=512, sampler="ddim", nfe=50)["macs_total"] / 1e12 == pytest.approx(22.85, rel=0.005)
    assert macs_for("DiT-L/2", image_size=256, sampler="ddim", nfe=20)["macs_total"] / 1e12 == pytest.approx(1.55, rel=0.005)


def test_cli_macs_json(capsys):
    from l2c.cli import main
    assert main(["macs", "--model", "DiT-XL/2", "--nfe", "10", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert {"macs_total", "macs_per_step", "remove_ratio", "remove_ratio_attn", "remove_ratio_mlp"} <= set(rep)
    assert rep["macs_total"] / 1e12 == pytest.approx(1.14, rel=0.005)
    assert main(["macs", "--model", "DiT-XXL/2", "--nfe", "10"]) == 2
    assert "unknown model name" in capsys.readouterr().err


@needs_compiler
def test_compiled_branches_compute_the_tanh_gelu_as_a_sigmoid_within_fp32_rounding():
    """l2c.compile_passes: x * sigmoid(2u) is the tanh-form GELU to fp32 rounding (no further from
    the fp64 value than eager fp32 is, over the range activations reach and far beyond, no NaN or
    inf), and the rewrite replaces exactly the tanh-form GELU of a Dynamo graph (DiT's MLP branch,
    whose output stays within fp32 rounding), not the exact GELU (U-ViT's)."""
    import torch.nn.functional as F

    from l2c.compile_passes import PASS_VERSION, gelu_tanh_as_sigmoid, inductor_options, rewrite_tanh_gelu
    x = torch.cat([torch.linspace(-12, 12, 200001), torch.tensor([-1e4, -100.0, 100.0, 1e4, 3e13])])
    ref = F.gelu(x.double(), approximate="tanh")
    fast, eager = gelu_tanh_as_sigmoid(x).double(), F.gelu(x, approximate="tanh").double()
    assert torch.isfinite(fast).all()
    scale = ref.abs().clamp_min(1e-3)  # relative error; absolute near the zero crossing
    eps = torch.finfo(torch.float32).eps
    assert ((fast - ref).abs() / scale).max() <= 2 * ((eager - ref).abs() / scale).max() + 2 * eps
    assert not torch.equal(fast, eager)  # another evaluation, not the same kernel

    def rewritten_branch(block: nn.Module, *args: torch.Tensor) -> tuple[int, torch.Tensor]:
        """The block's MLP branch through Dynamo's graph, rewritten, run eagerly (no inductor)."""
        counts = []

        def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
            counts.append(rewrite_tanh_gelu(gm.graph))
            gm.recompile()
            return gm.forward
        torch._dynamo.reset()
        try:
            with torch.no_grad():
                out = torch.compile(type(block).mlp_branch, backend=backend, dynamic=False)(block, *args)
        finally:
            torch._dynamo.reset()
        return sum(counts), out
    dit = tiny_model()
    blk = dit.blocks[0]
    width = blk.norm1.normalized_shape[0]
    h, shift, scale_ = torch.randn(3, 16, width), torch.randn(3, width), torch.randn(3, width)
    n, out = rewritten_branch(blk, h, shift, scale_)
    with torch.no_grad():
        ref_out = blk.mlp_branch(h, shift, scale_)
    assert n == 1 and not torch.equal(out, ref_out)
    assert ((out - ref_out).abs().max() / ref_out.abs().max()) <= eps * width
    uvit = create_model("U-ViT-Micro/2", input_size=8, in_channels=2, num_classes=5).eval()
    ublk = cacheable_blocks(uvit)[0]
    n, out = rewritten_branch(ublk, torch.randn(3, 17, ublk.norm1.normalized_shape[0]))
    assert n == 0
    # inductor itself runs the pass on the compiled branches (its compile caches off: a hit runs no pass)
    from torch._inductor import config as inductor_config

    from l2c.cache import branch_function
    from l2c.compile_passes import REWRITTEN
    before = dict(REWRITTEN)
    torch._dynamo.reset()
    try:
        with inductor_config.patch(fx_graph_cache=False), torch.no_grad():
            out = branch_function(blk, "mlp", compile=True)(h, shift, scale_)
    finally:
        torch._dynamo.reset()
    assert REWRITTEN["gelu_tanh"] == before["gelu_tanh"] + 1
    assert REWRITTEN["linear_bias"] == before["linear_bias"] + 2  # fc1, fc2
    assert ((out - ref_out).abs().max() / ref_out.abs().max()) <= eps * width
    assert inductor_options()["pre_grad_custom_pass"].uuid() == f"{PASS_VERSION}-gelu_tanh"  # in inductor's cache keys


def test_linear_bias_rewrite_moves_the_bias_out_of_the_gemm_on_cpu_only():
    """l2c.compile_passes.unfuse_linear_bias: on the ATen graph of a linear layer (what inductor's
    post-grad pass sees) every addmm with a 1-D CPU bias becomes mm + add, the graph computes the same
    values to fp32 rounding, and an addmm whose input is not a bias vector is left alone; unknown
    rewrite names are refused."""
    import torch.nn.functional as F
    from torch.fx.experimental.proxy_tensor import make_fx

    from l2c.compile_passes import inductor_options, unfuse_linear_bias
    w1, b1, w2, b2 = torch.randn(12, 8), torch.randn(12), torch.randn(5, 12), torch.randn(5)
    full = torch.randn(4, 3, 5)

    def f(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
          full: torch.Tensor) -> torch.Tensor:
        h = F.gelu(F.linear(x, w1, b1))
        return F.linear(h, w2, b2) + torch.addmm(full.reshape(12, 5), h.reshape(12, 12), w2.t()).reshape(4, 3, 5)
    args = (torch.randn(4, 3, 8), w1, b1, w2, b2, full)
    gm = make_fx(f, tracing_mode="fake")(*args)
    addmm = torch.ops.aten.addmm.default
    assert sum(n.target is addmm for n in gm.graph.nodes) == 3
    assert unfuse_linear_bias(gm.graph) == 2
    gm.recompile()
    assert sum(n.target is addmm for n in gm.graph.nodes) == 1  # the 2-D input stays fused
    assert sum(n.target is torch.ops.aten.mm.default for n in gm.graph.nodes) == 2
    assert torch.allclose(gm(*args), f(*args), rtol=1e-5, atol=1e-5)
    gm = make_fx(f, tracing_mode="fake")(*(a.to("meta") for a in args))
    assert unfuse_linear_bias(gm.graph) == 0  # not a CPU graph: left to inductor's own rules
    with pytest.raises(ValueError, match="unknown graph rewrites"):
        inductor_options(("gelu_tanh", "fuse_everything"))
    assert set(inductor_options(("linear_bias",))) == {"post_grad_custom_post_pass"}
    assert inductor_options(()) == {}


@needs_compiler
def test_compiled_path_equals_eager_and_compiles_three_graphs_for_any_schedule():
    """The torch.compile path (CacheEngine(compile=True)): same samples as eager up to fp32
    reassociation, the same branch evaluations, and three graphs shared by every block, step,
    schedule and engine (attention, MLP, and the whole forward of the steps that compute everything,
    storing every branch): a second batch, another schedule and a caching method's engine compile
    nothing more; the uncached sampler compiles one more (the whole forward, storing nothing), once,
    and without ``whole`` runs the branch graphs alone."""
    from torch._dynamo.utils import counters

    from l2c.caching import build_engine
    m = tiny_model()
    nfe = 6
    steps = default_cache_steps(nfe)
    flat = np.ones((nfe, 2 * len(m.blocks)), bool)
    flat[steps, 1:5] = False
    sched = CacheSchedule.from_mask(flat, steps)
    noise, labels = inputs()
    eager = CacheEngine(m, sched)
    ref = sample(m, noise, labels, nfe=nfe, cfg_scale=1.5, schedule=sched, engine=eager)
    torch._dynamo.reset()
    counters.clear()
    fast = CacheEngine(m, sched, compile=True)
    out = sample(m, noise, labels, nfe=nfe, cfg_scale=1.5, schedule=sched, engine=fast)
    assert_close_fp32_reassociation(out, ref, m, nfe)
    assert (fast.calls == eager.calls).all() and counters["stats"]["unique_graphs"] == 3
    out2 = sample(m, noise, labels, nfe=nfe, cfg_scale=1.5, schedule=sched, engine=fast)
    assert torch.equal(out2, out)
    branches_only = CacheEngine(m, sched, compile=True, whole=False)
    assert_close_fp32_reassociation(sample(m, noise, labels, nfe=nfe, cfg_scale=1.5, schedule=sched, engine=branches_only), ref, m, nfe)
    assert (branches_only.calls == eager.calls).all()
    flat[steps, 5:] = False
    other = CacheSchedule.from_mask(flat, steps)
    assert_close_fp32_reassociation(sample(m, noise, labels, nfe=nfe, cfg_scale=1.5, schedule=other, engine=CacheEngine(m, other, compile=True)),
                                    sample(m, noise, labels, nfe=nfe, cfg_scale=1.5, schedule=other), m, nfe)
    uncached = sample(m, noise, labels, nfe=nfe, cfg_scale=1.5)
    branches = sample(m, noise, labels, nfe=nfe, cfg_scale=1.5, engine=CacheEngine(m, None, compile=True, whole=False))
    assert_close_fp32_reassociation(branches, uncached, m, nfe)
    assert counters["stats"]["unique_graphs"] == 3
    whole = CacheEngine(m, None, compile=True)
    plain = sample(m, noise, labels, nfe=nfe, cfg_scale=1.5, engine=whole)
    assert_close_fp32_reassociation(plain, uncached, m, nfe)
    assert counters["stats"]["unique_graphs"] == 4  # the whole forward, storing nothing
    assert torch.equal(sample(m, noise, labels, nfe=nfe, cfg_scale=1.5, engine=CacheEngine(m, None, compile=True)), plain)
    drop = CacheSchedule.from_mask(flat, steps, policy="drop")  # its full steps run the uncached graph
    drop_fast, drop_ref = CacheEngine(m, drop, compile=True), CacheEngine(m, drop)
    assert_close_fp32_reassociation(sample(m, noise, labels, nfe=nfe, cfg_scale=1.5, schedule=drop, engine=drop_fast),
                                    sample(m, noise, labels, nfe=nfe, cfg_scale=1.5, schedule=drop, engine=drop_ref), m, nfe)
    assert (drop_fast.calls == drop_ref.calls).all()
    method = sample(m, noise, labels, nfe=nfe, cfg_scale=1.5,
                    engine=build_engine(m, "taylorseer", nfe=nfe, params={"interval": 2, "order": 1}, compile=True))
    assert_close_fp32_reassociation(method, sample(m, noise, labels, nfe=nfe, cfg_scale=1.5,
                                                   engine=build_engine(m, "taylorseer", nfe=nfe, params={"interval": 2, "order": 1})), m, nfe)
    assert counters["stats"]["unique_graphs"] == 4
    with pytest.raises(L2CError, match="built for another model or schedule"):
        sample(m, noise, labels, nfe=nfe, cfg_scale=1.5, engine=fast)


def test_environment_record_names_the_cpu_and_the_vector_instructions_its_kernels_use():
    """Results name the CPU by model and by the instruction set torch's kernels use on it (two x86_64
    machines can differ twofold in matrix-multiply rate), not by its architecture alone."""
    from l2c.io import environment_record
    rec = environment_record("cpu", "fp32")
    name, _, isa = rec["device_name"].rpartition(", ")
    assert name and isa == torch.backends.cpu.get_cpu_capability()
    assert (rec["device"], rec["dtype"]) == ("cpu", "fp32")
