"""Rule cell: the cell's data row (schedule, evaluation, latency, router record) as one JSON."""
import json

from _log import to_log

to_log(snakemake)  # noqa: F821
from l2c.cells import cell_record  # noqa: E402
from l2c.io import write_json  # noqa: E402

sm = snakemake  # noqa: F821
read = {k: json.load(open(sm.input[k])) for k in ("schedule", "eval", "latency")}
read["latency"] = read["latency"]["cells"][sm.wildcards.method]  # the cell's record in its (model, NFE) job
router = json.load(open(sm.input.router)) if "router" in sm.input.keys() else None
samples = json.load(open(sm.input.samples)) if "samples" in sm.input.keys() else None
write_json(sm.output[0], cell_record(sm.params.cell, sm.params.model, read["schedule"], read["eval"], read["latency"], router,
                                     samples))
