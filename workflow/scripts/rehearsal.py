"""Rules rehearsal_*: one stand-in input of a rehearsal config (l2c.rehearsal; random values)."""
from _log import to_log

to_log(snakemake)  # noqa: F821
from l2c.rehearsal import write_standin  # noqa: E402

sm = snakemake  # noqa: F821
write_standin(sm.params.spec, sm.output[0])
