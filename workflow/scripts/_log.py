"""First call of every rule script: send its output to the rule's log file, then run the script in
the run's job server when there is one (``l2c.jobserver``: no per-job import of torch)."""
import os
import sys


def to_log(snakemake) -> None:
    """fds 1 and 2 become the log (C-level output and the job server's child included); in a served
    child the log is already in place."""
    from l2c.jobserver import IN_CHILD, forward_script
    if os.environ.get(IN_CHILD):
        return
    if snakemake.log:
        fd = os.open(snakemake.log[0], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
    forward_script(sys.argv[0])  # the file Snakemake runs: its preamble, then this script
