# Per cell (model, NFE, method): schedule -> sample (sharded, resumable) -> evaluate (paired with
# the uncached cell of the same NFE) -> latency (in-process harness, one job per model and NFE) -> one JSON row.
# A caching-method cell (family "method", l2c.caching) has a method spec where the schedule would be,
# made after its calibration pass when the method needs one (rule calibrate).


rule calibrate:
    input:
        ckpt=checkpoint_of,
    output:
        f"{W}/{{model}}/nfe{{nfe}}/calibration/{{calib}}.json",
    params:
        model=model_spec,
        device=DEVICE,
    log:
        f"{W}/logs/calibrate/{{model}}-nfe{{nfe}}-{{calib}}.log",
    benchmark:
        f"{W}/benchmarks/calibrate/{{model}}-nfe{{nfe}}-{{calib}}.tsv"
    threads: THREADS
    resources:
        gpu=GPU,
    conda:
        ENV
    script:
        "../scripts/calibrate.py"


rule schedule:
    input:
        unpack(schedule_inputs),
    output:
        f"{R}/{{model}}/nfe{{nfe}}/schedules/{{method}}.json",
    params:
        cell=cell_dict,
        model=model_spec,
    log:
        f"{W}/logs/schedule/{{model}}-nfe{{nfe}}-{{method}}.log",
    threads: 1
    conda:
        ENV
    script:
        "../scripts/schedule.py"


rule sample_part:
    input:
        unpack(shard_inputs),
    output:
        temp(f"{W}/{{model}}/nfe{{nfe}}/samples/{{method}}.part{{part}}.done"),
    params:
        model=sample_spec,
        parts=SAMPLE_JOBS,
        device=DEVICE,
        dtype=CFG["dtype"],
    log:
        f"{W}/logs/sample/{{model}}-nfe{{nfe}}-{{method}}.part{{part}}.log",
    benchmark:
        f"{W}/benchmarks/sample/{{model}}-nfe{{nfe}}-{{method}}.part{{part}}.tsv"
    threads: THREADS
    resources:
        gpu=GPU,
    conda:
        ENV
    script:
        "../scripts/sample.py"


# With sample_jobs > 1 the shards come from sample_part and this job only merges them: it is then
# named merge_samples, so a cluster profile can keep it off the GPU partition.
rule:
    name:
        "sample" if SAMPLE_JOBS == 1 else "merge_samples"
    input:
        unpack(sample_inputs),
    output:
        npz=f"{W}/{{model}}/nfe{{nfe}}/samples/{{method}}.npz",
        meta=f"{W}/{{model}}/nfe{{nfe}}/samples/{{method}}.json",
    params:
        model=sample_spec,
        device=DEVICE,
        dtype=CFG["dtype"],
    log:
        f"{W}/logs/sample/{{model}}-nfe{{nfe}}-{{method}}.log",
    benchmark:
        f"{W}/benchmarks/sample/{{model}}-nfe{{nfe}}-{{method}}.tsv"
    threads: THREADS
    resources:
        gpu=GPU if SAMPLE_JOBS == 1 else 0,
    conda:
        ENV
    script:
        "../scripts/sample.py"


rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        f"{R}/{{model}}/nfe{{nfe}}/eval/{{method}}.json",
    params:
        backend=backend_of,
        paired=paired_arg,
        weights=weights_arg,
        device=device_arg,
        feature_cache=f"{W}/cache/features",  # reference features, by content: extracted once per reference
    log:
        f"{W}/logs/evaluate/{{model}}-nfe{{nfe}}-{{method}}.log",
    benchmark:
        f"{W}/benchmarks/evaluate/{{model}}-nfe{{nfe}}-{{method}}.tsv"
    threads: THREADS
    resources:
        gpu=GPU,
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} l2c evaluate {input.samples} --ref {input.ref} --backend {params.backend} "
        "{params.paired} {params.weights} {params.device} --feature-cache {params.feature_cache} --out {output} > {log} 2>&1"


# One job per (model, NFE) times all its cells, the uncached sampler around every few of them
# (l2c.cells.measure_latencies); its output holds one record per cell, which the cell rows read.
rule latency:
    input:
        unpack(latency_inputs),
    output:
        f"{R}/{{model}}/nfe{{nfe}}/latency.json",
    params:
        model=latency_spec,
        device=DEVICE,
        dtype=latency_dtype,
        torch_threads=THREADS,
    log:
        f"{W}/logs/latency/{{model}}-nfe{{nfe}}.log",
    benchmark:
        f"{W}/benchmarks/latency/{{model}}-nfe{{nfe}}.tsv"
    threads: latency_cores
    resources:
        gpu=GPU,
    conda:
        ENV
    script:
        "../scripts/latency.py"


rule cell:
    input:
        unpack(cell_inputs),
    output:
        f"{R}/{{model}}/nfe{{nfe}}/cells/{{method}}.json",
    params:
        cell=cell_dict,
        model=record_spec,
    log:
        f"{W}/logs/cell/{{model}}-nfe{{nfe}}-{{method}}.log",
    conda:
        ENV
    script:
        "../scripts/cell.py"
