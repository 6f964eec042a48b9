"""Rules fig3_redundancy ... fig7_samples: one figure as PNG + PDF + metadata JSON."""
from _log import to_log

to_log(snakemake)  # noqa: F821
from analysis import figures  # noqa: E402

sm = snakemake  # noqa: F821
figures.render(sm.rule, dict(sm.input.items()), dict(sm.params.items()), dict(sm.wildcards.items()),
               png=sm.output.png, pdf=sm.output.pdf, meta=sm.output.meta)
