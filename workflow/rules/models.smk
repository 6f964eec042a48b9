# The model (optional in-workflow pretraining, embedded digits only), the digits reference batch,
# the redundancy profile and the routers.


rule pretrain:
    output:
        model=f"{W}/{{model}}/pretrain/model.pt",
        record=f"{W}/{{model}}/pretrain/record.json",
    params:
        pretrain=pretrain_spec,
    log:
        f"{W}/logs/pretrain/{{model}}.log",
    benchmark:
        f"{W}/benchmarks/pretrain/{{model}}.tsv"
    threads: THREADS
    conda:
        ENV
    script:
        "../scripts/pretrain.py"


rule reference_digits:
    output:
        f"{W}/reference/digits.npz",
    log:
        f"{W}/logs/reference/digits.log",
    conda:
        ENV
    script:
        "../scripts/reference.py"


rule profile:
    input:
        ckpt=checkpoint_of,
    output:
        csv=f"{R}/{{model}}/nfe{{nfe}}/profile.csv",
        meta=f"{R}/{{model}}/nfe{{nfe}}/profile.json",
    params:
        model=model_spec,
        profile=CFG["profile"],
    log:
        f"{W}/logs/profile/{{model}}-nfe{{nfe}}.log",
    benchmark:
        f"{W}/benchmarks/profile/{{model}}-nfe{{nfe}}.tsv"
    threads: THREADS
    resources:
        gpu=GPU,
    conda:
        ENV
    script:
        "../scripts/profile.py"


rule train_router:
    input:
        ckpt=checkpoint_of,
        data=router_data,
        trained_with=router_pass,
    output:
        router=f"{W}/{{model}}/nfe{{nfe}}/routers/{{rid}}/router.pt",
        record=f"{R}/{{model}}/nfe{{nfe}}/routers/{{rid}}.json",
    params:
        model=router_spec,
        router=router_params,
        device=DEVICE,
    log:
        f"{W}/logs/train_router/{{model}}-nfe{{nfe}}-{{rid}}.log",
    benchmark:
        f"{W}/benchmarks/train_router/{{model}}-nfe{{nfe}}-{{rid}}.tsv"
    priority: 10  # the longest jobs, and most cells wait for them: start them first
    threads: THREADS
    resources:
        gpu=GPU,
    conda:
        ENV
    script:
        "../scripts/train_router.py"
