# Data -> tables and figures (analysis/: pandas, matplotlib, seaborn; no torch).


rule collect:
    input:
        CELL_JSONS,
    output:
        report(f"{R}/cells.csv", caption="../report/cells.rst", category="Data"),
    log:
        f"{W}/logs/analysis/collect.log",
    conda:
        ENV
    script:
        "../scripts/collect.py"


rule table:
    input:
        cells=f"{R}/cells.csv",
        paper=PAPER_RESULTS,
        peer=atables.PEER_RESULTS,
    output:
        csv=report(f"{R}/tables/{{table}}.csv", caption="../report/table.rst", category="Tables",
                   labels={"table": "{table}"}),
        md=f"{R}/tables/{{table}}.md",
        tex=f"{R}/tables/{{table}}.tex",
    params:
        note=TABLE_NOTE,
    log:
        f"{W}/logs/analysis/table-{{table}}.log",
    conda:
        ENV
    script:
        "../scripts/table.py"


rule fig3_redundancy:
    input:
        csv=f"{R}/{{model}}/nfe{{nfe}}/profile.csv",
        meta=f"{R}/{{model}}/nfe{{nfe}}/profile.json",
    output:
        png=report(f"{R}/figures/fig3-redundancy-{{model}}-nfe{{nfe}}.png", caption="../report/fig3.rst",
                   category="Fig. 3 redundancy", labels={"model": "{model}", "NFE": "{nfe}"}),
        pdf=f"{R}/figures/fig3-redundancy-{{model}}-nfe{{nfe}}.pdf",
        meta=f"{R}/figures/fig3-redundancy-{{model}}-nfe{{nfe}}.json",
    params:
        label=model_label,
    log:
        f"{W}/logs/analysis/fig3-{{model}}-nfe{{nfe}}.log",
    conda:
        ENV
    script:
        "../scripts/figure.py"


rule fig4_matched:
    input:
        cells=f"{R}/cells.csv",
    output:
        png=report(f"{R}/figures/fig4-matched-{{model}}-nfe{{nfe}}.png", caption="../report/fig4.rst",
                   category="Fig. 4 matched budgets", labels={"model": "{model}", "NFE": "{nfe}"}),
        pdf=f"{R}/figures/fig4-matched-{{model}}-nfe{{nfe}}.pdf",
        meta=f"{R}/figures/fig4-matched-{{model}}-nfe{{nfe}}.json",
    params:
        label=model_label,
    log:
        f"{W}/logs/analysis/fig4-{{model}}-nfe{{nfe}}.log",
    conda:
        ENV
    script:
        "../scripts/figure.py"


rule fig5_router:
    input:
        router=f"{R}/{{model}}/nfe{{nfe}}/routers/{{rid}}.json",
    output:
        png=report(f"{R}/figures/fig5-router-{{model}}-nfe{{nfe}}-{{rid}}.png", caption="../report/fig5.rst",
                   category="Fig. 5 router", labels={"model": "{model}", "NFE": "{nfe}", "router": "{rid}"}),
        pdf=f"{R}/figures/fig5-router-{{model}}-nfe{{nfe}}-{{rid}}.pdf",
        meta=f"{R}/figures/fig5-router-{{model}}-nfe{{nfe}}-{{rid}}.json",
    params:
        label=model_label,
        theta=main_theta,
    log:
        f"{W}/logs/analysis/fig5-{{model}}-nfe{{nfe}}-{{rid}}.log",
    conda:
        ENV
    script:
        "../scripts/figure.py"


rule fig6_theta:
    input:
        cells=f"{R}/cells.csv",
    output:
        png=report(f"{R}/figures/fig6-theta-{{model}}-nfe{{nfe}}.png", caption="../report/fig6.rst",
                   category="Fig. 6 theta sweep", labels={"model": "{model}", "NFE": "{nfe}"}),
        pdf=f"{R}/figures/fig6-theta-{{model}}-nfe{{nfe}}.pdf",
        meta=f"{R}/figures/fig6-theta-{{model}}-nfe{{nfe}}.json",
    params:
        label=model_label,
        lam=main_lambda,
    log:
        f"{W}/logs/analysis/fig6-{{model}}-nfe{{nfe}}.log",
    conda:
        ENV
    script:
        "../scripts/figure.py"


rule fig7_samples:
    input:
        samples=grid_samples,
    output:
        png=report(f"{R}/figures/fig7-samples-{{model}}-nfe{{nfe}}.png", caption="../report/fig7.rst",
                   category="Fig. 7 samples", labels={"model": "{model}", "NFE": "{nfe}"}),
        pdf=f"{R}/figures/fig7-samples-{{model}}-nfe{{nfe}}.pdf",
        meta=f"{R}/figures/fig7-samples-{{model}}-nfe{{nfe}}.json",
    params:
        label=model_label,
        methods=grid_methods,
        families=grid_families,
        sampler=sampler_of,
        n=CFG["figures"]["grid_samples"],
    log:
        f"{W}/logs/analysis/fig7-{{model}}-nfe{{nfe}}.log",
    conda:
        ENV
    script:
        "../scripts/figure.py"


rule fig8_speedup:
    input:
        cells=f"{R}/cells.csv",
    output:
        png=report(f"{R}/figures/fig8-speedup-{{model}}-nfe{{nfe}}.png", caption="../report/fig8.rst",
                   category="Beyond the paper", labels={"model": "{model}", "NFE": "{nfe}"}),
        pdf=f"{R}/figures/fig8-speedup-{{model}}-nfe{{nfe}}.pdf",
        meta=f"{R}/figures/fig8-speedup-{{model}}-nfe{{nfe}}.json",
    params:
        label=model_label,
    log:
        f"{W}/logs/analysis/fig8-{{model}}-nfe{{nfe}}.log",
    conda:
        ENV
    script:
        "../scripts/figure.py"


rule fig9_methods:
    input:
        cells=f"{R}/cells.csv",
    output:
        png=report(f"{R}/figures/fig9-methods-{{model}}-nfe{{nfe}}.png", caption="../report/fig9.rst",
                   category="Caching methods", labels={"model": "{model}", "NFE": "{nfe}"}),
        pdf=f"{R}/figures/fig9-methods-{{model}}-nfe{{nfe}}.pdf",
        meta=f"{R}/figures/fig9-methods-{{model}}-nfe{{nfe}}.json",
    params:
        label=model_label,
    log:
        f"{W}/logs/analysis/fig9-{{model}}-nfe{{nfe}}.log",
    conda:
        ENV
    script:
        "../scripts/figure.py"
