"""Rule calibrate: the calibration pass of a caching method (l2c calibrate) for one (model, NFE), into work/."""
from _log import to_log

to_log(snakemake)  # noqa: F821
from l2c.cells import calibrate_cell  # noqa: E402

sm = snakemake  # noqa: F821
calibrate_cell(sm.params.model, int(sm.wildcards.nfe), sm.wildcards.calib, sm.output[0], device=sm.params.device,
               threads=sm.threads)
