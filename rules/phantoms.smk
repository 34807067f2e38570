# Phantom datasets: synthetic DICOMs in the real datasets' layouts and CSV schemas, with planted findings,
# one rule per registered dataset. Only datasets whose config says `source: phantom` use them.

for _name in registry.list_datasets():
    _entry = registry.get_dataset(_name)

    rule:
        name:
            f"phantom_{_name}"
        output:
            metadata=[f"{PHANTOM_DIR}/{_name}/{f}" for f in _entry.metadata_files],
            truth=f"{PHANTOM_DIR}/{_name}/phantom_truth.csv",
            lesions=f"{PHANTOM_DIR}/{_name}/phantom_lesions.csv",
        log:
            f"logs/phantoms/{_name}.log",
        benchmark:
            f"benchmarks/phantoms/{_name}.tsv"
        conda:
            "../envs/mammoclip.yaml"
        threads: 1
        resources:
            mem_mb=grow(2000),
            # ~0.5 s per study at the demo's 0.2 scale, 25x the pixels at full size
            runtime=grow(
                10
                + int(
                    phantom_size(_name)
                    * 0.5
                    * max(config["phantoms"]["image_scale"] / 0.2, 1) ** 2
                    / 60
                )
            ),
        params:
            dataset=_name,
            out_dir=lambda wildcards, output: os.path.dirname(output.truth),
            size=phantom_size(_name),
            options={k: config["phantoms"][_name][k] for k in _entry.phantom_options},
            image_scale=config["phantoms"]["image_scale"],
            transfer_syntaxes=config["phantoms"]["transfer_syntaxes"],
            seed=config["seed"],
        script:
            "../workflow_scripts/phantom.py"


rule phantoms:
    input:
        [
            f"{PHANTOM_DIR}/{d}/phantom_truth.csv"
            for d in ENABLED_DATASETS
            if SPECS[d].source == "phantom"
        ],
