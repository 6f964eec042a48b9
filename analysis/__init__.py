"""Tables and figures of the reproduced paper, rendered from the workflow's data files (no torch)."""
