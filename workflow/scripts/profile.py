"""Rule profile: redundancy of each sub-layer per step (paper Fig. 3, the Metrics heuristic)."""
from _log import to_log

to_log(snakemake)  # noqa: F821
from l2c.cells import profile_cell  # noqa: E402
from l2c.io import environment_record, write_json  # noqa: E402

sm = snakemake  # noqa: F821
p = sm.params.profile
profile_cell(sm.params.model, int(sm.wildcards.nfe), sm.output.csv, num_samples=p["num_samples"], seed=p["seed"],
             threads=sm.threads)
write_json(sm.output.meta, {"model": sm.params.model, "nfe": int(sm.wildcards.nfe), **p,
                            "environment": environment_record("cpu", "fp32")})
