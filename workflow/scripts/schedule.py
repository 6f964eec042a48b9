"""Rule schedule: the cache schedule of one cell (router at theta, or a baseline at the matched budget), or the\nmethod spec of a caching-method cell (family, parameters, calibration file)."""
from _log import to_log

to_log(snakemake)  # noqa: F821
from l2c.cells import make_schedule  # noqa: E402

sm = snakemake  # noqa: F821


def one(key: str) -> str | None:
    """The named input's path (None when absent or, with check_files=false, undeclared)."""
    v = sm.input.get(key)
    return v if isinstance(v, str) or v is None else (v[0] if len(v) else None)


make_schedule(sm.params.cell, sm.params.model, sm.output[0], router=one("router"), match=one("match"), profile=one("profile"),
              calibration=one("calibration"))
