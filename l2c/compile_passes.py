"""Graph rewrites of the compiled paths (``CacheEngine(compile=True)``: :func:`l2c.cache.branch_function`,
:func:`l2c.cache.forward_function`).

The eager model is the official computation, bit for bit; the compiled path may compute the same
mathematics another way where that is faster, within fp32 rounding of the eager result (tested in
``tests/test_core.py``). Two rewrites, each measured by ``python benchmarks/compile_rewrites.py``
(the whole forward of the embedded models compiled with none, each and both of them, interleaved):

- **GELU, tanh form** (DiT's MLP): ``0.5 x (1 + tanh(u))`` with ``u = sqrt(2/pi) (x + 0.044715 x^3)``
  equals ``x * sigmoid(2u)``; inductor's CPU kernel for the sigmoid form (one exp) runs 2.6-3.3x
  faster than ATen's or inductor's tanh form on the DiT row's MLP activations (two runs), and is
  about as close to the fp64 value (largest errors 5.2e-7 against 4.3e-7;
  ``python benchmarks/gelu_forms.py``, ``results/benchmarks/gelu-forms-cpu.json``). The rewrite runs
  on Dynamo's graph before AOT autograd (inductor's ``pre_grad_custom_pass``).
- **Linear bias out of the GEMM** (CPU): a linear layer lowers to ``addmm(bias, x, W^T)``, which
  ATen runs as a copy of the broadcast bias into the output followed by a GEMM that reads that
  output back (beta = 1): two more passes over the output. ``add(mm(x, W^T), bias)`` instead lets
  inductor fold the bias into the kernel that reads the product anyway (GELU, gate and residual,
  LayerNorm, the attention layout). Inductor
  does this itself on GPUs only; here it runs on the ATen graph after inductor's own passes
  (``post_grad_custom_post_pass``). The sums are the same numbers in another order (fp32 rounding).

Both name themselves in inductor's cache keys (``uuid``: this file's hash and the rewrites chosen),
so a kernel compiled without them, or by another version of them, is never loaded for a graph
compiled with them.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

GELU_2U = 2 * math.sqrt(2 / math.pi)  # 2u = GELU_2U * (x + 0.044715 x^3)
# the rewrites' name in inductor's cache keys: this file's own hash, so any edit of it is a new key
PASS_VERSION = "l2c-compile-passes-" + hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def gelu_tanh_as_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation, ``0.5 x (1 + tanh(u))``, computed as the equal ``x * sigmoid(2u)``."""
    return x * torch.sigmoid(GELU_2U * (x + 0.044715 * (x * x * x)))


def _is_tanh_gelu(node: torch.fx.Node) -> bool:
    if node.op != "call_function" or node.target not in (torch._C._nn.gelu, F.gelu):
        return False
    approximate = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
    return approximate == "tanh"


def rewrite_tanh_gelu(graph: torch.fx.Graph) -> int:
    """Replace every tanh-form GELU call of a Dynamo graph by :func:`gelu_tanh_as_sigmoid`; returns
    how many it replaced."""
    found = [n for n in graph.nodes if _is_tanh_gelu(n)]
    for node in found:
        with graph.inserting_after(node):
            new = graph.call_function(gelu_tanh_as_sigmoid, (node.args[0],))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    return len(found)


def _bias_like(bias: torch.fx.Node, mat2: torch.fx.Node) -> bool:
    """``bias`` is a 1-D vector broadcast over the GEMM's rows (a linear layer's bias), on the CPU."""
    b, w = bias.meta.get("val"), mat2.meta.get("val")
    return (isinstance(b, torch.Tensor) and isinstance(w, torch.Tensor) and b.device.type == "cpu"
            and b.ndim == 1 and w.ndim == 2 and b.shape[0] == w.shape[1] and b.dtype == w.dtype)


def unfuse_linear_bias(graph: torch.fx.Graph) -> int:
    """Replace every ``addmm(bias, x, w)`` of an ATen graph whose input is a linear layer's bias (1-D,
    CPU, alpha = beta = 1) by ``add(mm(x, w), bias)``; returns how many it replaced."""
    aten = torch.ops.aten
    found = [n for n in graph.nodes if n.op == "call_function" and n.target is aten.addmm.default
             and len(n.args) == 3 and not n.kwargs and _bias_like(n.args[0], n.args[2])]
    for node in found:
        bias, x, w = node.args
        with graph.inserting_before(node):
            product = graph.call_function(aten.mm.default, (x, w))
            total = graph.call_function(aten.add.Tensor, (product, bias))
        product.meta.update(node.meta)
        total.meta.update(node.meta)
        node.replace_all_uses_with(total)
        graph.erase_node(node)
    return len(found)


# name -> (inductor option that runs it, the rewrite): Dynamo's graph before AOT autograd, or the
# ATen graph after inductor's own passes
_REWRITE_STAGES = {"gelu_tanh": ("pre_grad_custom_pass", rewrite_tanh_gelu),
                   "linear_bias": ("post_grad_custom_post_pass", unfuse_linear_bias)}
REWRITES = tuple(_REWRITE_STAGES)
REWRITTEN = {name: 0 for name in REWRITES}  # rewrites made by inductor's runs of the passes in this process (a compile-cache hit runs none)
_PASSES: dict[str, Any] = {}


def _graph_pass(name: str) -> Any:
    """The rewrite as an inductor custom graph pass (one object per rewrite, so inductor's cache keys
    see the same uuid in every compile of this process)."""
    if name not in _PASSES:
        from torch._inductor.custom_graph_pass import CustomGraphPass
        rewrite = _REWRITE_STAGES[name][1]

        class _Rewrite(CustomGraphPass):
            def __call__(self, graph: torch.fx.Graph) -> None:
                REWRITTEN[name] += rewrite(graph)

            def uuid(self) -> str:
                return f"{PASS_VERSION}-{name}"

        _PASSES[name] = _Rewrite()
    return _PASSES[name]


def inductor_options(rewrites: tuple[str, ...] | list[str] = REWRITES) -> dict[str, Any]:
    """The ``torch.compile(options=...)`` of the compiled paths: the chosen rewrites above (all by
    default) as inductor's custom graph passes."""
    unknown = set(rewrites) - set(REWRITES)
    if unknown:
        raise ValueError(f"unknown graph rewrites {sorted(unknown)}: expected some of {list(REWRITES)}")
    return {_REWRITE_STAGES[name][0]: _graph_pass(name) for name in rewrites}
