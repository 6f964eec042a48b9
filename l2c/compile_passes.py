"""Graph rewrites of the compiled branches (``CacheEngine(compile=True)``, :func:`l2c.cache.branch_function`).

The eager model is the official computation, bit for bit; the compiled path may compute the same
mathematics another way where that is faster, within fp32 rounding of the eager result (tested in
``tests/test_core.py``). One rewrite so far:

- **GELU, tanh form** (DiT's MLP): ``0.5 x (1 + tanh(u))`` with ``u = sqrt(2/pi) (x + 0.044715 x^3)``
  equals ``x * sigmoid(2u)``; inductor's CPU kernel for the sigmoid form (one exp) runs 2.6-3.3x
  faster than ATen's or inductor's tanh form on the DiT row's MLP activations (two runs), and is
  about as close to the fp64 value (largest errors 5.2e-7 against 4.3e-7;
  ``python benchmarks/gelu_forms.py``, ``results/benchmarks/gelu-forms-cpu.json``). The rewrite runs on Dynamo's graph before AOT autograd (inductor's
  ``pre_grad_custom_pass``) and names itself in inductor's cache keys (``uuid``: this file's hash),
  so a kernel compiled without it, or by another version of it, is never loaded for a graph
  compiled with it.
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


_PASS: Any = None
REWRITTEN = {"gelu_tanh": 0}  # rewrites made by inductor's runs of the pass in this process (a compile-cache hit runs none)


def inductor_options() -> dict[str, Any]:
    """The ``torch.compile(options=...)`` of the compiled branches: the rewrites above as inductor's
    pre-grad custom pass."""
    global _PASS
    if _PASS is None:
        from torch._inductor.custom_graph_pass import CustomGraphPass

        class _Rewrites(CustomGraphPass):
            def __call__(self, graph: torch.fx.Graph) -> None:
                REWRITTEN["gelu_tanh"] += rewrite_tanh_gelu(graph)

            def uuid(self) -> str:
                return PASS_VERSION

        _PASS = _Rewrites()
    return {"pre_grad_custom_pass": _PASS}
