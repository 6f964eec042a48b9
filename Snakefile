"""l2c-suite: Learning-to-Cache (Ma et al., NeurIPS 2024) reproduced end to end.

    snakemake --cores all                                   # the embedded default (config/config.yaml)
    snakemake --cores all --configfile config/paper.yaml    # the paper's grid (bring the checkpoints)
    snakemake --cores 2 --configfile config/rehearsal.yaml  # the paper's grid at toy scale, stand-in inputs
    snakemake --report report.html                          # tables and figures, captioned

Stages per (model, NFE, method) cell: [pretrain] -> profile -> train router (per lambda) ->
schedule -> sample -> evaluate -> latency -> cell JSON -> tables and figures. docs/workflow.md
describes the config, the profiles and the budgets."""
from snakemake.utils import min_version

min_version("9.0")

# --configfile replaces the default; list several files to overlay them in order.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/cells.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/rehearsal.smk"


# Local runs: one job server imports torch and the package once; every job forks from it
# (l2c/jobserver.py). Off with --config job_server=false; cluster jobs run in their own processes.
JOB_SERVER = {}


onstart:
    from l2c.localrun import drop_default_rate_limit

    if not CFG["rate_limit"] and drop_default_rate_limit(workflow):  # l2c/localrun.py: no per-second re-selection timers
        print("l2c: local run: Snakemake's default job-rate limit is off (the cores are the limit)")
    if CFG["job_server"] and workflow.local_exec:
        from l2c import jobserver

        JOB_SERVER["proc"], JOB_SERVER["path"] = jobserver.start(f"{W}/logs/job-server.log", workflow.basedir)
        os.environ[jobserver.ENV] = JOB_SERVER["path"]


onsuccess:
    if JOB_SERVER:
        from l2c import jobserver

        jobserver.stop(JOB_SERVER["proc"], JOB_SERVER["path"])


onerror:
    if JOB_SERVER:
        from l2c import jobserver

        jobserver.stop(JOB_SERVER["proc"], JOB_SERVER["path"])


localrules:
    all,
    reference_digits,
    cell,
    collect,
    table,
    fig3_redundancy,
    fig4_matched,
    fig5_router,
    fig6_theta,
    fig7_samples,
    fig8_speedup,
    fig9_methods,


rule all:
    input:
        all_targets(),
    default_target: True
