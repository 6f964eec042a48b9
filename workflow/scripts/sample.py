"""Rules sample / sample_part / merge_samples: one cell's samples (l2c sample; shards resume after a kill).
sample_part computes shard range ``part`` of ``parts``; sample (merge_samples when the cell fans out)
computes what is missing and merges."""
from pathlib import Path

from _log import to_log

to_log(snakemake)  # noqa: F821
from l2c.cells import sample_cell  # noqa: E402

sm = snakemake  # noqa: F821
if "part" in sm.wildcards.keys():
    out = Path(sm.output[0]).with_name(f"{sm.wildcards.method}.npz")
    sample_cell(sm.params.model, sm.input.schedule, out, device=sm.params.device, dtype=sm.params.dtype,
                part=(int(sm.wildcards.part), sm.params.parts), threads=sm.threads)
    Path(sm.output[0]).touch()
else:
    sample_cell(sm.params.model, sm.input.schedule, sm.output.npz, device=sm.params.device, dtype=sm.params.dtype,
                threads=sm.threads)
