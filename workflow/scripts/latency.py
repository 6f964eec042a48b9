"""Rule latency: in-process timing of every cell of one (model, NFE) vs the uncached sampler
(l2c.cells.measure_latencies), one record per cell."""
from pathlib import Path

from _log import to_log

to_log(snakemake)  # noqa: F821
from l2c.cells import measure_latencies  # noqa: E402
from l2c.io import write_json  # noqa: E402

sm = snakemake  # noqa: F821
lat = sm.params.model["latency"]
schedules = {Path(p).stem: p for p in sm.input.schedules}
res = measure_latencies(sm.params.model, schedules, int(sm.wildcards.nfe), device=sm.params.device,
                        dtype=sm.params.dtype, batch=lat["batch"], repeats=lat["repeats"], warmup=lat["warmup"],
                        seed=lat["seed"], threads=sm.params.torch_threads, progress=True)
res["cores_reserved"] = sm.threads  # every core when latency.exclusive (CPU): nothing ran beside it
write_json(sm.output[0], res)
