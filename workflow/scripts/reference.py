"""Rule reference_digits: the digits reference batch (ADM-style .npz, 500 held-out images)."""
from _log import to_log

to_log(snakemake)  # noqa: F821
from l2c.data import digits_reference_npz  # noqa: E402

digits_reference_npz(snakemake.output[0])  # noqa: F821
