#!/usr/bin/env bash
# Runs once inside the freshly created conda environment (snakemake --use-conda).
# L2C_REPO is set by workflow/rules/common.smk to the checkout that holds the Snakefile.
set -euo pipefail
pip install -e "${L2C_REPO:?L2C_REPO is not set: run through the workflow}"
