"""The paper's figures, drawn from the workflow's data files (matplotlib + seaborn; no torch).

Each figure is written as PNG and PDF plus a sidecar JSON with its provenance (inputs, device,
dtype, library versions, seeds, git revision); the same record is embedded in the PNG's text
metadata (key ``l2c``) and the PDF's ``Subject``.

- Fig. 3 :func:`fig3_redundancy`: reuse error per layer and step, attention and MLP panels.
- Fig. 4 :func:`fig4_matched`: quality (FID, PSNR) vs latency and MACs: L2C vs heuristics vs fewer steps.
- Fig. 5 :func:`fig5_router`: the learned router's sigmoid(beta) per step and layer.
- Fig. 6 :func:`fig6_theta`: the theta sweep of one router.
- Fig. 7 :func:`fig7_samples`: sample grids of several methods from the same seeds.
- Fig. 8 :func:`fig8_speedup` (beyond the paper): quality vs speedup past L2C's 2x cap with
  trajectory-trained routers."""
from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .tables import CACHING_LABELS, HEURISTIC_FAMILIES, best_heuristic, beyond_cells, method_label, methods_cells  # noqa: E402

STYLE = {  # family -> (label, colour, marker); L2C stands out, heuristics share a muted palette
    "l2c": ("Learning-to-Cache", "#d62728", "o"),
    "fewer": ("Fewer steps", "#1f77b4", "s"),
    "bottom": ("Manual: from Bottom", "#8c564b", "v"),
    "top": ("Manual: from Top", "#7f7f7f", "^"),
    "random": ("Manual: Random", "#bcbd22", "D"),
    "metrics": ("Manual: Metrics", "#9467bd", "P"),
    "interval": ("Interval (FORA-style)", "#17becf", "X"),
    "deepcache": ("DeepCache-style", "#2ca02c", "h"),
    "faster-diffusion": ("Faster-Diffusion-style", "#ff7f0e", "p"),
    "full": ("Uncached", "black", "*"),
    "trajectory": ("Trajectory router", "#e377c2", "o"),
    "best": ("Best heuristic at the L2C budget", "#8c564b", "v"),
}


def git_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "matplotlib": matplotlib.__version__, "seaborn": sns.__version__,
            "pandas": pd.__version__, "numpy": np.__version__}


def _env_from_cells(d: pd.DataFrame) -> dict:
    cols = ("device", "device_name", "dtype", "torch", "git_revision", "threads", "backend", "feature_extractor",
            "sampling_seed", "n_samples", "latency_batch", "latency_repeats")
    return {c: sorted({str(v) for v in d[c].dropna()}) for c in cols if c in d}


def save(fig: plt.Figure, png: str, pdf: str, meta_path: str, meta: dict) -> None:
    """PNG + PDF + sidecar JSON, the provenance embedded in both images."""
    meta = {**meta, "versions": versions(), "analysis_git_revision": git_revision()}
    text = json.dumps(meta, sort_keys=True, default=str)
    title = meta.get("title", "")
    fig.savefig(png, dpi=150, bbox_inches="tight", metadata={"Title": title, "Software": "l2c-suite analysis/figures.py", "l2c": text})
    fig.savefig(pdf, bbox_inches="tight", metadata={"Title": title, "Creator": "l2c-suite analysis/figures.py", "Subject": text,
                                                    "CreationDate": None})
    plt.close(fig)
    Path(meta_path).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")


# -- Fig. 3 ---------------------------------------------------------------------------------------------

def fig3_redundancy(profile_csv: str, profile_meta: str, label: str, nfe: int):
    """Relative error of reusing each sub-layer's previous-step output, per layer (x) and step (colour)."""
    df = pd.read_csv(profile_csv).dropna(subset=["branch_rel_err"])
    info = json.loads(Path(profile_meta).read_text())
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    norm = plt.Normalize(df["step"].min(), df["step"].max())
    for ax, branch, title in zip(axes, ("attn", "mlp"), ("Attention (MHSA)", "Feed-forward (MLP)")):
        d = df[df["branch"] == branch]
        sns.lineplot(data=d, x="block", y="branch_rel_err", hue="step", palette="viridis", hue_norm=norm, legend=False,
                     ax=ax, linewidth=1)
        ax.set(title=title, xlabel="layer (block index)", ylabel="relative L2 error of reuse")
        ax.set_yscale("log")
    sm = plt.cm.ScalarMappable(norm=norm, cmap="viridis")
    cb = fig.colorbar(sm, ax=axes, label="sampling step k (0 = noisiest)", pad=0.01)
    cb.ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.suptitle(f"Fig. 3 analogue: redundancy of {label}, NFE {nfe} ({info.get('num_samples')} samples)", y=1.02)
    meta = {"title": f"Fig. 3 redundancy {label} NFE {nfe}", "profile": info, "seeds": {"profile": info.get("seed")},
            "environment": info.get("environment")}
    return fig, meta


# -- Fig. 4 ---------------------------------------------------------------------------------------------

REL_LATENCY = "latency / uncached latency (interleaved in one process)"


def macs_unit(x: float) -> tuple[float, str]:
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if x >= scale:
            return scale, unit
    return 1e3, "K"


def psnr_for_plot(d: pd.DataFrame) -> pd.Series:
    """PSNR of the mean MSE; samples identical to the uncached ones plot at the per-sample cap (100 dB)."""
    return d["psnr_db"].where(d["psnr_db"].notna() | (d["family"] == "full"), d["psnr_mean_db"])

def _family_points(d: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean (and spread over seeds) per (family, budget)."""
    g = d.groupby(["family", "lam"], dropna=False)
    out = g.agg(x=(x, "mean"), y=(y, "mean"), ylo=(y, "min"), yhi=(y, "max"), n=(y, "size")).reset_index()
    return out.sort_values(["family", "x"])


def _legend_and_title(fig: plt.Figure, axes: np.ndarray, d: pd.DataFrame, title: str, ncol: int) -> None:
    """One legend under a grid of panels and a title naming the metric back-end(s) (``{backend}``)."""
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False, bbox_to_anchor=(0.5, -0.04))
    fig.suptitle(title.format(backend=", ".join(sorted(set(d["backend"].dropna())))), fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))


def fig4_matched(cells_csv: str, model: str, nfe: int, label: str):
    """Quality vs cost at matched budgets (paper Fig. 4): FID and PSNR vs latency and MACs."""
    df = pd.read_csv(cells_csv)
    d = df[(df["model"] == model) & (df["nfe"] == nfe) & ~df["sweep"].astype(bool)
           & df["family"].isin(("full", "l2c", "fewer") + HEURISTIC_FAMILIES)].copy()
    scale, unit = macs_unit(d["macs_total"].max())
    d["macs"] = d["macs_total"] / scale
    d["psnr"] = psnr_for_plot(d)
    d["rel_latency"] = d["latency_s"] / d["latency_full_s"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [("rel_latency", "fid", REL_LATENCY, "FID"), ("macs", "fid", f"MACs per image ({unit})", "FID"),
              ("rel_latency", "psnr", REL_LATENCY, "PSNR to uncached (dB)"),
              ("macs", "psnr", f"MACs per image ({unit})", "PSNR to uncached (dB)")]
    for ax, (x, y, xl, yl) in zip(axes.flat, panels):
        for fam in ("fewer",) + HEURISTIC_FAMILIES + ("l2c", "full"):
            f = d[d["family"] == fam].dropna(subset=[y])
            if f.empty:
                continue
            name, color, marker = STYLE[fam]
            p = _family_points(f, x, y)
            yerr = np.vstack([p["y"] - p["ylo"], p["yhi"] - p["y"]]) if (p["n"] > 1).any() else None
            ax.errorbar(p["x"], p["y"], yerr=yerr, color=color, marker=marker, ms=9 if fam == "full" else 6,
                        lw=2.2 if fam == "l2c" else 1.2, ls="none" if fam == "full" else "-", label=name, capsize=2,
                        zorder=3 if fam == "l2c" else 2)
        ax.set(xlabel=xl, ylabel=yl)
        ax.grid(alpha=0.3)
    _legend_and_title(fig, axes, d, f"Fig. 4 analogue: {label}, NFE {nfe}: L2C vs heuristics vs fewer steps at matched "
                      "budgets (metric backend: {backend}; random: mean and range over seeds)", ncol=4)
    meta = {"title": f"Fig. 4 matched budgets {label} NFE {nfe}", "cells": d["method"].tolist(), "environment": _env_from_cells(d),
            "seeds": {"sampling": sorted(set(d["sampling_seed"].dropna().astype(int))),
                      "random heuristics": sorted(set(d["seed"].dropna().astype(int)))}}
    return fig, meta


# -- Fig. 5 ---------------------------------------------------------------------------------------------

def fig5_router(router_json: str, label: str, theta: float):
    """Heat maps of sigmoid(beta) of a learned router: step (rows, cache steps only) x layer, per branch."""
    r = json.loads(Path(router_json).read_text())
    probs = np.asarray(r["probs"])  # [NFE, 2*depth], sampling order
    steps = r["cache_steps"]
    p = probs[steps]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(steps) + 2.2), sharey=True)
    for ax, s, title in zip(axes, (0, 1), ("Attention (MHSA)", "Feed-forward (MLP)")):
        sub = p[:, s::2]
        sns.heatmap(sub, ax=ax, vmin=0, vmax=1, cmap="magma", cbar=s == 1, cbar_kws={"label": "sigmoid(beta): compute probability"},
                    xticklabels=range(sub.shape[1]), yticklabels=steps, linewidths=0.2, linecolor="white")
        rows, cols = np.nonzero(sub <= theta)  # one artist for all the dots (a text per cell took seconds)
        ax.scatter(cols + 0.5, rows + 0.5, s=6, c="white", marker="o", linewidths=0)
        ax.set(title=f"{title}: {100 * (sub <= theta).mean():.1f}% reused at θ={theta:g}", xlabel="layer (block index)")
    axes[0].set_ylabel("cache step k (sampling order, 0 = noisiest)")
    fig.suptitle(f"Fig. 5 analogue: router of {label}, NFE {r['nfe']}, λ={r['lambda']:g} ({r['objective']}), "
                 f"{r['steps']} training steps; dot = reused at θ={theta:g}", fontsize=10)
    fig.tight_layout()
    meta = {"title": f"Fig. 5 router {label} NFE {r['nfe']} lambda {r['lambda']:g}", "router": router_json,
            "theta": theta, "lambda": r["lambda"], "steps": r["steps"], "environment": r.get("environment"),
            "seeds": {"router": r.get("config", {}).get("seed")}}
    return fig, meta


# -- Fig. 6 ---------------------------------------------------------------------------------------------

def fig6_theta(cells_csv: str, model: str, nfe: int, lam: float, label: str):
    """FID and PSNR vs latency for the thresholds theta of one router (paper Fig. 6)."""
    df = pd.read_csv(cells_csv)
    d = df[(df["model"] == model) & (df["nfe"] == nfe) & (df["family"] == "l2c") & np.isclose(df["lam"], lam)].sort_values("theta")
    full = df[(df["model"] == model) & (df["nfe"] == nfe) & (df["family"] == "full")]
    fewer = df[(df["model"] == model) & (df["nfe"] == nfe) & (df["family"] == "fewer")
               & ~df["sweep"].astype(bool)].sort_values("latency_s")  # not the trajectory cells' twins
    scale, unit = macs_unit(df["macs_total"].max())

    def prep(f: pd.DataFrame) -> pd.DataFrame:
        return f.assign(psnr=psnr_for_plot(f), rel=f["latency_s"] / f["latency_full_s"], macs=f["macs_total"] / scale)
    d, fewer, full = prep(d), prep(fewer), prep(full)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [("rel", "fid", REL_LATENCY, "FID"), ("macs", "fid", f"MACs per image ({unit})", "FID"),
              ("macs", "psnr", f"MACs per image ({unit})", "PSNR to uncached (dB)")]
    for ax, (x, y, xl, yl) in zip(axes, panels):
        dd = d.sort_values(x)
        ax.plot(dd[x], dd[y], "-o", color=STYLE["l2c"][1], label=f"L2C, λ={lam:g}, θ sweep")
        for i, (_, r) in enumerate(dd.iterrows()):
            if pd.notna(r[y]):
                ax.annotate(f"θ={r['theta']:g}", (r[x], r[y]), textcoords="offset points", xytext=(4, 6 if i % 2 else -12), fontsize=8)
        if not fewer.empty:
            ff = fewer.sort_values(x)
            ax.plot(ff[x], ff[y], "-s", color=STYLE["fewer"][1], label="Fewer steps (matched to each λ)")
        if y == "fid" and not full.empty:
            ax.plot(full[x].iloc[:1] if x == "macs" else [1.0], full[y].iloc[:1], "*", color="black", ms=12, label="Uncached")
        ax.set(xlabel=xl, ylabel=yl)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    backend = ", ".join(sorted(set(d["backend"].dropna())))
    fig.suptitle(f"Fig. 6 analogue: threshold θ of {label}, NFE {nfe} (metric backend: {backend})", fontsize=10)
    fig.tight_layout()
    meta = {"title": f"Fig. 6 theta sweep {label} NFE {nfe}", "cells": d["method"].tolist(), "lambda": lam,
            "environment": _env_from_cells(d), "seeds": {"sampling": sorted(set(d["sampling_seed"].dropna().astype(int)))}}
    return fig, meta


# -- Fig. 7 ---------------------------------------------------------------------------------------------

def fig7_samples(npz_paths: list[str], methods: list[str], families: list[str], sampler: str, n: int, label: str, nfe: int):
    """The first ``n`` samples of several cells: same seeds and labels, so columns are comparable."""
    rows, infos = [], []
    for path in npz_paths:
        with np.load(path) as f:
            rows.append(f["arr_0"][:n])
            labels = f["arr_1"][:n] if "arr_1" in f else None
        side = Path(path).with_suffix(".json")
        infos.append(json.loads(side.read_text()) if side.exists() else {})
    h, w, c = rows[0].shape[1:]
    gap = 2
    canvas = np.full((len(rows) * (h + gap) - gap, n * (w + gap) - gap, c), 255, np.uint8)
    for i, imgs in enumerate(rows):
        for j, img in enumerate(imgs):
            canvas[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = img
    width = max(5.0, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(width, (width - 2.5) * canvas.shape[0] / canvas.shape[1] + 0.8))
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray" if c == 1 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([i * (h + gap) + h / 2 for i in range(len(rows))])
    ax.set_yticklabels([f"{method_label(pd.Series({'family': f, 'sampler': sampler, 'seed': None}))}\n{m}"
                        for m, f in zip(methods, families)], fontsize=8)
    ax.grid(False)
    for side in ax.spines.values():
        side.set_visible(False)
    title = f"Fig. 7 analogue: {label}, NFE {nfe}: the same {n} seeds per row"
    if labels is not None:
        title += f" (classes {' '.join(str(int(v)) for v in labels)})"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    env = [i.get("environment", {}) for i in infos]
    meta = {"title": f"Fig. 7 samples {label} NFE {nfe}", "methods": methods, "samples": npz_paths, "n": n,
            "environment": env[0] if env else None,
            "seeds": {"sampling": sorted({i.get("config", {}).get("seed") for i in infos if i})}}
    return fig, meta


# -- Fig. 8 (beyond the paper) ----------------------------------------------------------------------------

# quality against speed, in MACs and measured (Figs. 8 and 9): (x, y, x label, y label)
SPEED_PANELS = [("speedup_macs", "fid", "speedup in MACs (x)", "FID"), ("speedup", "fid", "measured speedup (x)", "FID"),
                ("speedup_macs", "psnr", "speedup in MACs (x)", "PSNR to uncached (dB)"),
                ("speedup", "psnr", "measured speedup (x)", "PSNR to uncached (dB)")]


def _plot_reference_families(ax, d: pd.DataFrame, x: str, y: str, alpha: float = 1.0) -> None:
    """Fewer steps, the best heuristic, L2C, the trajectory router and the uncached point of ``d``."""
    for fam in ("fewer", "best", "l2c", "trajectory", "full"):
        f = d[d["family"] == fam].dropna(subset=[x, y]).sort_values(x)
        if f.empty:
            continue
        name, color, marker = STYLE[fam]
        ax.plot(f[x], f[y], color=color, marker=marker, ms=9 if fam == "full" else 6, ls="none" if fam == "full" else "-",
                lw=2.2 if fam in ("l2c", "trajectory") else 1.2, label=name, alpha=alpha)


def fig8_speedup(cells_csv: str, model: str, nfe: int, label: str):
    """Quality vs speedup past L2C's 2x cap: L2C routers, trajectory routers, fewer steps (twins of
    both) and the best heuristic at each L2C budget; FID and paired PSNR vs MACs and measured speedup."""
    df = pd.read_csv(cells_csv)
    df = df[(df["model"] == model) & (df["nfe"] == nfe)]
    d = beyond_cells(df).copy()
    best = best_heuristic(df).assign(family="best")
    d = pd.concat([d, best.groupby(["match"], as_index=False).agg(
        {**{c: "mean" for c in ("speedup_macs", "speedup", "fid", "psnr_db", "psnr_mean_db", "mse")},
         "family": "first", "method": "first"})])
    d["psnr"] = psnr_for_plot(d)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, (x, y, xl, yl) in zip(axes.flat, SPEED_PANELS):
        _plot_reference_families(ax, d, x, y)
        ax.axvline(2.0, color="grey", ls="--", lw=1)
        ax.text(2.0, ax.get_ylim()[1], " L2C cap (2x)", va="top", fontsize=8, color="grey")
        ax.set(xlabel=xl, ylabel=yl)
        ax.grid(alpha=0.3)
    _legend_and_title(fig, axes, d, f"Beyond the paper: {label}, NFE {nfe}: trajectory-trained routers vs L2C, fewer steps "
                      "and the best heuristic (metric backend: {backend})", ncol=5)
    meta = {"title": f"Fig. 8 speedup {label} NFE {nfe}", "cells": d["method"].tolist(), "environment": _env_from_cells(df),
            "seeds": {"sampling": sorted(set(df["sampling_seed"].dropna().astype(int)))}}
    return fig, meta


# -- Fig. 9 (the field's caching methods) ---------------------------------------------------------------

METHOD_MARKERS = {"taylorseer": "o", "teacache": "s", "fbcache": "^", "dbcache": "v", "toca": "D", "smoothcache": "P",
                  "delta-dit": "X"}


def fig9_methods(cells_csv: str, model: str, nfe: int, label: str):
    """Quality vs MACs speedup and vs measured speedup: each caching method (one curve per family
    over its rows), L2C, the trajectory router, fewer steps and the best heuristic on the same axes."""
    df = pd.read_csv(cells_csv)
    df = df[(df["model"] == model) & (df["nfe"] == nfe)]
    d = methods_cells(df).copy()
    d["psnr"] = psnr_for_plot(d)
    best = d[d["family"].isin(HEURISTIC_FAMILIES)]
    d = pd.concat([d[~d["family"].isin(HEURISTIC_FAMILIES)], best.assign(family="best")])
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    palette = sns.color_palette("tab10", 10)
    for ax, (x, y, xl, yl) in zip(axes.flat, SPEED_PANELS):
        _plot_reference_families(ax, d, x, y, alpha=0.8)
        meth = d[d["family"] == "method"]
        for i, (cach, f) in enumerate(meth.groupby("caching", sort=True)):
            f = f.dropna(subset=[x, y]).sort_values(x)
            if f.empty:
                continue
            ax.plot(f[x], f[y], color=palette[(i + 4) % 10], marker=METHOD_MARKERS.get(cach, "o"), ms=7, lw=1.2, ls="--",
                    label=CACHING_LABELS.get(cach, cach))
        ax.set(xlabel=xl, ylabel=yl)
        ax.grid(alpha=0.3)
    handles, labels = {}, {}
    for ax in axes.flat:  # one legend entry per family present in any panel
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=5, frameon=False, bbox_to_anchor=(0.5, -0.04))
    fig.suptitle(f"Caching methods: {label}, NFE {nfe}: quality vs MACs and measured speedup, beside L2C, the trajectory "
                 f"router, fewer steps and the best heuristic (metric backend: {', '.join(sorted(set(d['backend'].dropna())))})",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    meta = {"title": f"Fig. 9 caching methods {label} NFE {nfe}", "cells": d["method"].tolist(),
            "environment": _env_from_cells(df), "seeds": {"sampling": sorted(set(df["sampling_seed"].dropna().astype(int)))}}
    return fig, meta


# -- dispatch (workflow/scripts/figure.py) --------------------------------------------------------------

def render(rule: str, inputs: dict[str, Any], params: dict[str, Any], wildcards: dict[str, str], *, png: str, pdf: str,
           meta: str) -> None:
    """Draw the figure of a Snakemake rule and save it (PNG, PDF, sidecar JSON)."""
    model, nfe = wildcards.get("model"), int(wildcards["nfe"]) if "nfe" in wildcards else None
    label = params.get("label", model)
    sns.set_theme(style="whitegrid", context="paper")
    if rule == "fig3_redundancy":
        fig, m = fig3_redundancy(inputs["csv"], inputs["meta"], label, nfe)
    elif rule == "fig4_matched":
        fig, m = fig4_matched(inputs["cells"], model, nfe, label)
    elif rule == "fig5_router":
        fig, m = fig5_router(inputs["router"], label, params["theta"])
    elif rule == "fig6_theta":
        fig, m = fig6_theta(inputs["cells"], model, nfe, params["lam"], label)
    elif rule == "fig8_speedup":
        fig, m = fig8_speedup(inputs["cells"], model, nfe, label)
    elif rule == "fig9_methods":
        fig, m = fig9_methods(inputs["cells"], model, nfe, label)
    elif rule == "fig7_samples":
        samples = inputs["samples"]
        fig, m = fig7_samples([samples] if isinstance(samples, str) else list(samples), list(params["methods"]),
                             list(params["families"]), params["sampler"], params["n"], label, nfe)
    else:
        raise ValueError(f"no figure for rule {rule!r}")
    save(fig, png, pdf, meta, {**m, "rule": rule, "wildcards": wildcards,
                               "inputs": {k: v if isinstance(v, str) else list(v) for k, v in inputs.items()}})
