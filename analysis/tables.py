"""The paper's tables, reproduced from the workflow's cell rows (``results/cells.csv``).

Pure pandas: no torch. Each table is a function of the cells frame returning a frame whose rows
are cells (one row per cell JSON) with the paper's published numbers beside ours where the cell
is a paper cell (``analysis/paper_results.csv``, transcribed from the camera-ready paper). Every
table names the metric backend in a column and in its caption; paired PSNR to the uncached
samples of the same NFE is a column wherever a cell has an uncached twin.

Units: our MACs in G (thop convention, per image, whole sampling), the paper's in T; precision /
recall in percent like the paper; latency in seconds of the in-process harness."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

PAPER_RESULTS = str(Path(__file__).resolve().parent / "paper_results.csv")
# published numbers of the field's caching methods (docs/methods.md; transcribed from the methods'
# papers and repositories), matched to a cell by (paper model, grid NFE, cell name)
PEER_RESULTS = str(Path(__file__).resolve().parent / "peer_results.csv")
CACHING_LABELS = {"taylorseer": "TaylorSeer", "teacache": "TeaCache", "fbcache": "First-block cache", "dbcache": "DBCache",
                  "toca": "ToCa", "smoothcache": "SmoothCache", "delta-dit": "Δ-DiT-style"}

FAMILY_LABELS = {
    "full": "{solver}", "fewer": "{solver} (fewer steps)", "l2c": "L2C", "official": "L2C (official router)",
    "bottom": "Manual: from Bottom", "top": "Manual: from Top", "random": "Manual: Random", "metrics": "Manual: Metrics",
    "interval": "Interval caching (FORA-style)", "deepcache": "DeepCache-style", "faster-diffusion": "Faster-Diffusion-style",
    "drop": "Learning-to-Drop", "random-drop": "Random Drop",
    "cache-all": "Cache", "cache-all-unshifted": "Cache, unshifted", "trajectory": "Trajectory router (beyond the paper)",
}
SOLVERS = {"ddim": "DDIM", "dpm2": "DPM-Solver-2"}
HEURISTIC_FAMILIES = ("bottom", "top", "random", "metrics", "interval", "deepcache", "faster-diffusion")
TABLE3_FAMILIES = ("interval", "deepcache", "faster-diffusion")  # the paper's Table 3: other cache methods

# the published columns shown beside ours (paper_results.csv name -> table column)
PAPER_COLS = {"nfe": "paper NFE", "removed": "paper removed", "macs_t": "paper MACs (T)", "latency_s": "paper latency (s)",
              "speedup": "paper speedup", "is": "paper IS", "fid": "paper FID", "sfid": "paper sFID",
              "precision": "paper precision", "recall": "paper recall", "remove_ratio": "paper remove ratio (%)",
              "remove_ratio_mlp": "paper FFN (%)", "remove_ratio_attn": "paper MHSA (%)", "hours": "paper hours"}
QUALITY = ["IS", "FID", "sFID", "precision", "recall", "PSNR (dB)"]
PAPER_QUALITY = ["paper IS", "paper FID", "paper sFID", "paper precision", "paper recall"]
ID = ["model", "method", "lambda", "theta", "NFE"]

# columns of every table (tests check them; CSV keeps full precision, md/tex are rounded)
TABLE_COLUMNS: dict[str, list[str]] = {
    "table1": ID + ["MACs (G)", "latency (s)", "speedup"] + QUALITY + ["backend", "paper NFE", "paper MACs (T)",
                                                                        "paper latency (s)", "paper speedup"] + PAPER_QUALITY,
    "table2": ID + ["MACs (G)", "latency (s)", "speedup", "FID", "IS", "PSNR (dB)", "backend", "paper NFE", "paper MACs (T)",
                    "paper latency (s)", "paper speedup", "paper FID"],
    "table3": ID + ["removed", "latency (s)", "speedup", "FID", "PSNR (dB)", "backend", "paper latency (s)", "paper speedup", "paper FID"],
    "table4": ["model", "NFE", "lambda", "theta", "remove ratio (%)", "FFN (%)", "MHSA (%)", "removed", "backend",
               "paper remove ratio (%)", "paper FFN (%)", "paper MHSA (%)"],
    "table5": ID + ["removed", "latency (s)", "speedup"] + QUALITY + ["backend", "paper removed", "paper latency (s)",
                                                                       "paper speedup"] + PAPER_QUALITY,
    "table6": ID + ["removed", "latency (s)", "speedup"] + QUALITY + ["backend", "paper latency (s)", "paper speedup"] + PAPER_QUALITY,
    "table8": ["model", "NFE", "lambda", "theta", "router steps", "router training (s)", "routers per run", "removed", "backend",
               "paper hours"],
    "table9": ID + ["removed", "latency (s)", "speedup"] + QUALITY + ["backend", "paper removed", "paper latency (s)",
                                                                       "paper speedup"] + PAPER_QUALITY,
    "fig4": ID + ["family", "budget of", "removed", "MACs (G)", "latency (s)", "speedup", "speedup (MACs)"] + QUALITY + ["backend"],
    "beyond": ID + ["family", "budget of", "removed", "MACs (G)", "speedup (MACs)", "latency (s)", "speedup"] + QUALITY + ["backend"],
    "methods": ["model", "method", "params", "NFE", "family", "MACs (G)", "speedup (MACs)", "latency (s)", "speedup", "FID",
                "sFID", "IS", "PSNR (dB)", "backend", "paper speedup (MACs)", "paper FID", "paper source"],
}

TITLES = {
    "table1": "Table 1: uncached sampler, fewer steps at the L2C cell's MACs, and L2C (DiT family, DDIM)",
    "table2": "Table 2: U-ViT with DPM-Solver-2: uncached, fewer steps, L2C",
    "table3": "Table 3: other cache methods on U-ViT (DeepCache-, Faster-Diffusion-style and interval caching near the L2C budget)",
    "table4": "Table 4: remove ratio of the learned routers in cache steps (overall, FFN, MHSA)",
    "table5": "Tables 5/7: dropping vs caching at the L2C budget",
    "table6": "Table 6: every sub-layer cached in every cache step",
    "table8": "Table 8: router hyper-parameters and training cost",
    "table9": "Table 9: lambda ablation",
    "fig4": "Fig. 4 data: L2C vs heuristics vs fewer steps at matched budgets",
    "beyond": "Beyond the paper: trajectory-trained routers (every step may reuse) vs L2C, fewer steps and the best heuristic, by MACs speedup",
    "methods": "The field's caching methods (l2c.caching, authors' defaults) beside L2C, the trajectory router, fewer steps and "
               "the best heuristic, by MACs speedup (method MACs: the decisions its sampling runs took)",
}


# -- reading -----------------------------------------------------------------------------------------

def collect(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per cell JSON, in the given (plan) order."""
    return pd.DataFrame([json.loads(Path(p).read_text()) for p in paths])


def tables_for(cells: list[dict]) -> list[str]:
    """The tables a planned grid fills (``cells``: dicts with family, sampler, model, nfe, lam)."""
    fams = {c["family"] for c in cells}
    dpm = [c for c in cells if c["sampler"] == "dpm2"]
    lams: dict[tuple, set] = {}
    for c in cells:
        if c["family"] == "l2c":
            lams.setdefault((c["model"], c["nfe"]), set()).add(c["lam"])
    out = []
    if any(c["sampler"] == "ddim" for c in cells):
        out.append("table1")
    if dpm:
        out.append("table2")
    if any(c["family"] in TABLE3_FAMILIES for c in dpm):
        out.append("table3")
    if "l2c" in fams:
        out += ["table4"]
    if fams & {"drop", "random-drop"}:
        out.append("table5")
    if fams & {"cache-all", "cache-all-unshifted"}:
        out.append("table6")
    if "l2c" in fams:
        out.append("table8")
    if any(len(v) > 1 for v in lams.values()):
        out.append("table9")
    if fams & set(HEURISTIC_FAMILIES + ("fewer",)):
        out.append("fig4")
    if "trajectory" in fams:
        out.append("beyond")
    if "method" in fams:
        out.append("methods")
    return out


def read_paper(path: str | Path = PAPER_RESULTS) -> pd.DataFrame:
    return pd.read_csv(path)


# -- building blocks ----------------------------------------------------------------------------------

def method_label(row: pd.Series) -> str:
    solver = SOLVERS.get(row["sampler"], row["sampler"])
    if row["family"] == "method":
        return CACHING_LABELS.get(row.get("caching"), row.get("caching"))
    label = FAMILY_LABELS.get(row["family"], row["family"]).format(solver=solver)
    if row["family"] == "cache-all" and row["sampler"] == "dpm2":
        label = "Cache, shifted"
    if row["family"] in ("random", "random-drop") and pd.notna(row.get("seed")):
        label += f" (seed {int(row['seed'])})"
    return label


def _opt(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else v


def ours(df: pd.DataFrame) -> pd.DataFrame:
    """Our columns, one row per cell (precision/recall in percent, MACs in G)."""
    out = pd.DataFrame({
        "model": df["model_label"], "method": df.apply(method_label, axis=1),
        "lambda": df["lam"], "theta": df["theta"], "NFE": df["nfe_sampled"].astype(int),
        "family": df["family"], "budget of": df["match"],
        "removed": [("–" if pd.isna(t) else f"{int(r)}/{int(t)}" if t else "0/0")
                    for r, t in zip(df["num_reused"], df["cache_sublayers"])],
        "MACs (G)": df["macs_total"] / 1e9, "latency (s)": df["latency_s"], "speedup": df["speedup"],
        "speedup (MACs)": df["speedup_macs"],
        "IS": df["is"], "FID": df["fid"], "sFID": df["sfid"],
        "precision": 100 * df["precision"], "recall": 100 * df["recall"],
        "PSNR (dB)": df["psnr_db"].where(df["mse"].fillna(1) != 0, np.inf),  # identical to the uncached samples
        "remove ratio (%)": 100 * df["remove_ratio"], "FFN (%)": 100 * df["remove_ratio_mlp"],
        "MHSA (%)": 100 * df["remove_ratio_attn"],
        "router steps": df["router_steps"], "router training (s)": df["router_train_s"],
        "routers per run": df["routers_per_run"] if "routers_per_run" in df else np.nan,  # routers sharing that time
        "backend": df["backend"] + " (" + df["feature_extractor"].fillna("?") + ")",
    }, index=df.index)
    return out


def _paper_row(paper: pd.DataFrame, table: int, cell: pd.Series, use_lambda: bool) -> dict:
    if not isinstance(cell["paper_model"], str):
        return {}
    fam = "l2c" if cell["family"] == "official" else cell["family"]  # the paper's numbers come from its routers
    use_lambda = use_lambda and cell["family"] != "official"
    p = paper[(paper["table"] == table) & (paper["model"] == cell["paper_model"]) & (paper["family"] == fam)
              & (paper["grid_nfe"] == cell["nfe"])]
    if use_lambda and fam in ("l2c", "fewer"):
        p = p[np.isclose(p["lambda"].astype(float), float(cell["lam"]), rtol=1e-6, atol=0)] if pd.notna(cell["lam"]) else p.iloc[0:0]
    if p.empty:
        return {}
    r = p.iloc[0]
    return {PAPER_COLS[k]: _opt(r[k]) for k in PAPER_COLS if k in r.index}


def with_paper(df: pd.DataFrame, paper: pd.DataFrame, table: int, use_lambda: bool = True) -> pd.DataFrame:
    """Our columns plus the published ones of the matching paper row (blank where none)."""
    out = ours(df)
    extra = pd.DataFrame([_paper_row(paper, table, r, use_lambda) for _, r in df.iterrows()], index=df.index)
    for col in PAPER_COLS.values():
        out[col] = extra[col] if col in extra else np.nan
    return out


def _select(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    for c in cols:
        if c not in df:
            df[c] = np.nan
    return df[cols].reset_index(drop=True)


def _in_plan_order(d: pd.DataFrame, *keys: str, order: dict | None = None) -> pd.DataFrame:
    """Models in config order, NFE descending, then ``keys`` (``order`` ranks the families)."""
    models = {m: i for i, m in enumerate(dict.fromkeys(d["model"]))}
    d = d.assign(_m=d["model"].map(models), _n=-d["nfe"], _f=d["family"].map(order or {}).fillna(99))
    return d.sort_values(["_m", "_n", "_f", *keys], kind="stable")


def _main(df: pd.DataFrame) -> pd.Series:
    """Every cell but the supplementary ones: theta sweep (Fig. 6), fewer-steps twins of trajectory cells."""
    return ~df["sweep"].astype(bool)


# -- the tables ------------------------------------------------------------------------------------------

def table1(df: pd.DataFrame, paper: pd.DataFrame, sampler: str = "ddim", number: int = 1) -> pd.DataFrame:
    """Per (model, NFE): uncached, fewer steps (per lambda), L2C per lambda at the main theta."""
    d = df[(df["sampler"] == sampler) & df["family"].isin(["full", "fewer", "l2c", "official"]) & _main(df)]
    d = _in_plan_order(d, "lam", order={"full": 0, "fewer": 1, "l2c": 2, "official": 3})
    return _select(with_paper(d, paper, number), TABLE_COLUMNS[f"table{number}"])


def table2(df: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    return table1(df, paper, sampler="dpm2", number=2)


def table3(df: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """U-ViT: uncached, the other cache methods near the L2C budget, and that L2C cell."""
    d = df[df["sampler"] == "dpm2"]
    others = d["family"].isin(TABLE3_FAMILIES)
    d = d[d.set_index(["model", "nfe"]).index.isin(d[others].set_index(["model", "nfe"]).index)]
    others = d["family"].isin(TABLE3_FAMILIES)
    keep = (d["family"] == "full") | others
    l2c = set(d.loc[others, "match"])
    keep |= (d["family"] == "l2c") & d["method"].isin(l2c)
    return _select(with_paper(d[keep], paper, 3, use_lambda=False), TABLE_COLUMNS["table3"])


def table4(df: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    d = df[(df["family"] == "l2c") & _main(df)]
    return _select(with_paper(d, paper, 4), TABLE_COLUMNS["table4"])


def table5(df: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Random drop, learning-to-drop, and the L2C cell whose budget they match."""
    drops = df[df["family"].isin(["random-drop", "drop"])]
    d = df[df["family"].isin(["random-drop", "drop"]) | ((df["family"] == "l2c") & df["method"].isin(set(drops["match"])))
           & df.set_index(["model", "nfe"]).index.isin(drops.set_index(["model", "nfe"]).index)]
    return _select(with_paper(d, paper, 5, use_lambda=False), TABLE_COLUMNS["table5"])


def table6(df: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    have = df[df["family"].isin(["cache-all", "cache-all-unshifted"])].set_index(["model", "nfe"]).index
    d = df[df["family"].isin(["full", "cache-all", "cache-all-unshifted"]) & df.set_index(["model", "nfe"]).index.isin(have)]
    return _select(with_paper(d, paper, 6, use_lambda=False), TABLE_COLUMNS["table6"])


def table8(df: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    d = df[(df["family"] == "l2c") & _main(df)]
    return _select(with_paper(d, paper, 8), TABLE_COLUMNS["table8"])


def table9(df: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    d = df[(df["family"] == "l2c") & _main(df)]
    n = d.groupby(["model", "nfe"])["lam"].transform("nunique")
    d = _in_plan_order(d[n > 1], "lam")
    return _select(with_paper(d, paper, 9), TABLE_COLUMNS["table9"])


def fig4(df: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """The Fig. 4 points: every L2C cell at the main theta, fewer steps and heuristics at its budget."""
    fams = ("full", "l2c", "fewer") + HEURISTIC_FAMILIES
    have = df[df["family"].isin(HEURISTIC_FAMILIES + ("fewer",))].set_index(["model", "nfe"]).index
    d = df[df["family"].isin(fams) & _main(df) & df.set_index(["model", "nfe"]).index.isin(have)]
    d = _in_plan_order(d, "lam", "seed", order={f: i for i, f in enumerate(fams)})
    return _select(ours(d), TABLE_COLUMNS["fig4"])


def best_heuristic(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, NFE, matched L2C cell), the heuristic cell with the highest paired PSNR (mean over
    seeds for the seeded ones): the strongest hand-made rule at that budget."""
    h = df[df["family"].isin(HEURISTIC_FAMILIES) & _main(df)].copy()
    if h.empty:
        return h
    h["_psnr"] = h.groupby(["model", "nfe", "match", "family"])["psnr_db"].transform("mean")
    best = h.sort_values("_psnr", ascending=False, kind="stable").groupby(["model", "nfe", "match"], sort=False)["family"].first()
    keep = h.set_index(["model", "nfe", "match", "family"]).index.isin(
        pd.MultiIndex.from_tuples([(*k, f) for k, f in best.items()]))
    return h[keep].drop(columns="_psnr")


def beyond_cells(df: pd.DataFrame) -> pd.DataFrame:
    """The uncached, trajectory, main-theta L2C and every fewer-steps cell (L2C's and the trajectory
    routers' twins) of the (model, NFE) pairs that have trajectory cells."""
    have = df[df["family"] == "trajectory"].set_index(["model", "nfe"]).index
    at = df.set_index(["model", "nfe"]).index.isin(have)
    return df[at & (df["family"].isin(["full", "trajectory", "fewer"]) | ((df["family"] == "l2c") & _main(df)))]


def beyond(df: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Trajectory routers beside every L2C cell, the fewer-steps twins of both and the best heuristic at
    each L2C budget, per (model, NFE) sorted by MACs speedup."""
    d = beyond_cells(df)
    have = d.set_index(["model", "nfe"]).index
    d = pd.concat([d, best_heuristic(df[df.set_index(["model", "nfe"]).index.isin(have)])])
    models = {m: i for i, m in enumerate(dict.fromkeys(d["model"]))}
    d = d.assign(_m=d["model"].map(models), _n=-d["nfe"]).sort_values(["_m", "_n", "speedup_macs", "family"], kind="stable")
    return _select(ours(d), TABLE_COLUMNS["beyond"])


def read_peer(path: str | Path = PEER_RESULTS) -> pd.DataFrame:
    return pd.read_csv(path)


def methods_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, NFE) with caching-method cells: those cells, the uncached one, the L2C cells at the
    main theta, the trajectory routers, the fewer-steps cells and the best heuristic at each L2C budget."""
    if "caching" not in df:
        return df.iloc[0:0]
    have = df[df["family"] == "method"].set_index(["model", "nfe"]).index
    at = df.set_index(["model", "nfe"]).index.isin(have)
    d = df[at & _main(df) & df["family"].isin(["full", "l2c", "trajectory", "fewer", "method"])]
    return pd.concat([d, best_heuristic(df[at])])


def methods(df: pd.DataFrame, paper: pd.DataFrame, peer: pd.DataFrame | None = None) -> pd.DataFrame:
    """The caching methods beside L2C, per (model, NFE) sorted by MACs speedup, with the published
    numbers of ``peer_results.csv`` beside the paper cells they match (e.g. TaylorSeer N3O3 at DDIM-50)."""
    peer = read_peer() if peer is None else peer
    d = methods_cells(df)
    models = {m: i for i, m in enumerate(dict.fromkeys(d["model"]))}
    d = d.assign(_m=d["model"].map(models), _n=-d["nfe"]).sort_values(["_m", "_n", "speedup_macs", "family"], kind="stable")
    out = ours(d)
    out["params"] = d["params"] if "params" in d else np.nan
    rows = []
    for _, r in d.iterrows():
        p = peer[(peer["model"] == r["paper_model"]) & (peer["grid_nfe"] == r["nfe"]) & (peer["method"] == r["method"])]
        rows.append({"paper speedup (MACs)": _opt(p.iloc[0]["speedup_macs"]), "paper FID": _opt(p.iloc[0]["fid"]),
                     "paper source": p.iloc[0]["source"]} if len(p) else {})
    extra = pd.DataFrame(rows, index=d.index)
    for col in ("paper speedup (MACs)", "paper FID", "paper source"):
        out[col] = extra[col] if col in extra else np.nan
    return _select(out, TABLE_COLUMNS["methods"])


TABLES: dict[str, Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]] = {
    "table1": table1, "table2": table2, "table3": table3, "table4": table4, "table5": table5,
    "table6": table6, "table8": table8, "table9": table9, "fig4": fig4, "beyond": beyond, "methods": methods,
}


# -- rendering ---------------------------------------------------------------------------------------------

DIGITS = {"paper speedup (MACs)": 2, "MACs (G)": 3, "latency (s)": 4, "speedup": 2, "speedup (MACs)": 2, "IS": 2, "FID": 2, "sFID": 2,
          "precision": 2, "recall": 2, "PSNR (dB)": 2, "remove ratio (%)": 2, "FFN (%)": 2, "MHSA (%)": 2,
          "router training (s)": 1, "paper latency (s)": 3}


def _fmt(col: str, v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if isinstance(v, float) and np.isinf(v):
        return "∞"
    if col in ("lambda", "theta"):
        return f"{float(v):g}"
    if col in ("router steps", "routers per run", "paper removed", "paper NFE"):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if col == "MACs (G)":
            return f"{v:.4g}"
        if col.startswith("paper ") and col not in DIGITS:
            return f"{v:g}"
        return f"{v:.{DIGITS.get(col, 2)}f}"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return str(v)


def display(df: pd.DataFrame) -> pd.DataFrame:
    """Rounded strings for Markdown / LaTeX."""
    return pd.DataFrame({c: [_fmt(c, v) for v in df[c]] for c in df.columns})


def caption(name: str, df: pd.DataFrame) -> str:
    backends = ", ".join(sorted(set(df["backend"].dropna()))) if "backend" in df else ""
    return (f"{TITLES[name]}. Metric backend: {backends or 'none'}. Ours: MACs in G (thop convention), latency of the "
            "in-process harness, precision/recall in %, PSNR to the uncached samples of the same NFE; "
            "'paper' columns: published values (ImageNet, ADM evaluator, A5000), never comparable across backends.")


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("–", "--"), ("∞", r"$\infty$")):
        s = s.replace(a, b)
    return s


def to_latex(df: pd.DataFrame, cap: str, label: str) -> str:
    """A booktabs table (no pandas Styler dependency: plain strings, escaped)."""
    d = display(df)
    cols = "l" * 2 + "r" * (len(d.columns) - 2)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{_latex_escape(cap)}}}", rf"\label{{tab:{label}}}",
             r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
             " & ".join(_latex_escape(c) for c in d.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(str(v)) for v in row) + r" \\" for row in d.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}", ""]
    return "\n".join(lines)


def to_markdown(df: pd.DataFrame, cap: str) -> str:
    d = display(df)
    head = "| " + " | ".join(d.columns) + " |\n|" + "|".join("---" for _ in d.columns) + "|\n"
    body = "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in d.itertuples(index=False))
    return f"**{cap}**\n\n{head}{body}"


def render_table(name: str, cells_csv: str | Path, paper_csv: str | Path = PAPER_RESULTS, *, csv: str | Path,
                 md: str | Path, tex: str | Path, note: str | None = None, peer_csv: str | Path = PEER_RESULTS) -> pd.DataFrame:
    """Build table ``name`` from the cells and write it as CSV (full precision), Markdown and LaTeX;
    ``note`` leads the caption (a rehearsal says its numbers are meaningless)."""
    df = pd.read_csv(cells_csv)
    t = methods(df, read_paper(paper_csv), read_peer(peer_csv)) if name == "methods" else TABLES[name](df, read_paper(paper_csv))
    cap = caption(name, t) if not note else f"{note} {caption(name, t)}"
    t.to_csv(csv, index=False)
    Path(md).write_text(to_markdown(t, cap))
    Path(tex).write_text(to_latex(t, cap, name))
    return t
