"""Snakemake's scheduler on a local run: its default job-rate limit turned off.

Snakemake (9.x, this suite's minimum) limits job submissions to ``--max-jobs-per-timespan`` (default
100 per second) and, to lift that limit again, re-runs its job selection one timespan after every
scheduling round that left ready jobs waiting. Every such round arms another timer, so while jobs
wait for cores (a grid of hundreds of jobs on a few cores) each finished job adds one more
selection round per second for the rest of the run, and every round stats the inputs of every
ready job. On a 2-core machine that took half a core for the scheduler alone. A local run needs no
submission limit (the cores are the limit), so the Snakefile's ``onstart`` hook drops the limiter
when it is at Snakemake's default; another limit given on the command line, every cluster run, and
a run with ``--config rate_limit=true`` keep it. ``benchmarks/workflow_time.py --variants
server,rate-limit`` measures both, with the scheduler's own CPU time."""
from __future__ import annotations

SNAKEMAKE_DEFAULT = (100, 1)  # --max-jobs-per-timespan 100/1s


def drop_default_rate_limit(workflow) -> bool:
    """Turn off the job-rate limiter of a local run's scheduler when it is Snakemake's default.
    Returns whether it was turned off (False: a cluster run, a user's own limit, or a Snakemake
    without one)."""
    if not getattr(workflow, "local_exec", False):
        return False
    scheduler = getattr(workflow, "scheduler", None)
    limiter = getattr(scheduler, "job_rate_limiter", None)
    if limiter is None:
        return False
    try:
        setting = (int(limiter.max_jobs), float(limiter.timespan))
    except (AttributeError, TypeError, ValueError):
        return False
    if setting != SNAKEMAKE_DEFAULT:
        return False
    scheduler.job_rate_limiter = None
    return True
