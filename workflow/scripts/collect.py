"""Rule collect: every cell JSON -> results/cells.csv (one row per cell)."""
from _log import to_log

to_log(snakemake)  # noqa: F821
from analysis.tables import collect  # noqa: E402

collect(list(snakemake.input)).to_csv(snakemake.output[0], index=False)  # noqa: F821
