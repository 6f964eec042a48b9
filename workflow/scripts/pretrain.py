"""Rule pretrain: train the model row's DiT on the embedded data (l2c pretrain, resumable)."""
from pathlib import Path

from _log import to_log

to_log(snakemake)  # noqa: F821
from l2c.cells import pretrain_model  # noqa: E402

pretrain_model(snakemake.params.pretrain, Path(snakemake.output.model).parent, threads=snakemake.threads)  # noqa: F821
