"""Rule train_router: one Learning-to-Cache, learning-to-drop or trajectory router (l2c train-router,
resumable), trained together with the routers that share its passes (l2c.cells.router_passes)."""
from pathlib import Path

from _log import to_log

to_log(snakemake)  # noqa: F821
from l2c.cells import train_router_cell  # noqa: E402

sm = snakemake  # noqa: F821
r = sm.params.router
train_router_cell(sm.params.model, int(sm.wildcards.nfe), r["objective"], r["lam"], r["opts"],
                  Path(sm.output.router).parent, sm.output.record, threads=sm.threads, device=sm.params.device,
                  companions=r["companions"])
