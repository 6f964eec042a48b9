"""Send a script's stdout/stderr to the rule's log file (imported first by every adapter)."""
import sys


def to_log(snakemake) -> None:
    if snakemake.log:
        f = open(snakemake.log[0], "w", buffering=1)
        sys.stdout = sys.stderr = f
