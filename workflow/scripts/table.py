"""Rule table: one of the paper's tables, reproduced, as CSV + Markdown + LaTeX (booktabs)."""
from _log import to_log

to_log(snakemake)  # noqa: F821
from analysis.tables import render_table  # noqa: E402

sm = snakemake  # noqa: F821
render_table(sm.wildcards.table, sm.input.cells, sm.input.paper, peer_csv=sm.input.peer, csv=sm.output.csv, md=sm.output.md, tex=sm.output.tex,
             note=sm.params.get("note"))
