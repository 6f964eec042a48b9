# Stand-in inputs of a rehearsal config (config/rehearsal.yaml; l2c/rehearsal.py): every file the
# paper's grid reads but cannot make, generated in the layout of the real one with random values.
# The router-training latents are encoded from stand-in images by `l2c encode-latents`, the command
# a real data set goes through. A config without a `rehearsal` section defines none of these rules.
if CFG.get("rehearsal"):

    rule rehearsal_checkpoint:
        output:
            "{ckpt}",
        wildcard_constraints:
            ckpt=standin_regex("checkpoint"),
        params:
            spec=lambda wc, output: rehearsal.standin_spec(CFG, "checkpoint", output[0]),
        log:
            f"{W}/logs/rehearsal/rehearsal_checkpoint/{{ckpt}}.log",
        conda:
            ENV
        script:
            "../scripts/rehearsal.py"

    rule rehearsal_vae_folder:
        output:
            directory("{vae}"),
        wildcard_constraints:
            vae=standin_regex("vae", "diffusers"),
        params:
            spec=lambda wc, output: rehearsal.standin_spec(CFG, "vae", output[0]),
        log:
            f"{W}/logs/rehearsal/rehearsal_vae_folder/{{vae}}.log",
        conda:
            ENV
        script:
            "../scripts/rehearsal.py"

    rule rehearsal_vae_file:
        output:
            "{vae}",
        wildcard_constraints:
            vae=standin_regex("vae", "ldm"),
        params:
            spec=lambda wc, output: rehearsal.standin_spec(CFG, "vae", output[0]),
        log:
            f"{W}/logs/rehearsal/rehearsal_vae_file/{{vae}}.log",
        conda:
            ENV
        script:
            "../scripts/rehearsal.py"

    rule rehearsal_images:
        output:
            directory("{images}"),
        wildcard_constraints:
            images=standin_regex("images"),
        params:
            spec=lambda wc, output: rehearsal.standin_spec(CFG, "images", output[0]),
        log:
            f"{W}/logs/rehearsal/rehearsal_images/{{images}}.log",
        conda:
            ENV
        script:
            "../scripts/rehearsal.py"

    rule rehearsal_inception:
        output:
            "{weights}",
        wildcard_constraints:
            weights=standin_regex("inception"),
        params:
            spec=lambda wc, output: rehearsal.standin_spec(CFG, "inception", output[0]),
        log:
            f"{W}/logs/rehearsal/rehearsal_inception/{{weights}}.log",
        conda:
            ENV
        script:
            "../scripts/rehearsal.py"

    rule rehearsal_reference:
        input:
            weights=CFG["inception_weights"] or [],
        output:
            "{ref}",
        wildcard_constraints:
            ref=standin_regex("reference"),
        params:
            spec=lambda wc, output: rehearsal.standin_spec(CFG, "reference", output[0]),
        threads: THREADS
        log:
            f"{W}/logs/rehearsal/rehearsal_reference/{{ref}}.log",
        conda:
            ENV
        script:
            "../scripts/rehearsal.py"

    rule encode_latents:
        input:
            images=lambda wc: rehearsal.settings(CFG)["images_dir"],
            vae=lambda wc: latents_entry(wc)["vae"],
        output:
            "{latents}",
        wildcard_constraints:
            latents=standin_regex("latents"),
        params:
            size=lambda wc: latents_entry(wc)["image_size"],
        threads: THREADS
        log:
            f"{W}/logs/rehearsal/encode_latents/{{latents}}.log",
        conda:
            ENV
        shell:
            "OMP_NUM_THREADS={threads} l2c encode-latents --data folder:{input.images} --vae {input.vae} "
            "--image-size {params.size} --out {output} --no-progress > {log} 2>&1"
