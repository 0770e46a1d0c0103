"""Training stages: base (from scratch), cpt (continued pre-training with replay), sft, dpo.

Each stage is one readable recipe module (setup → train → save) over transformers' Trainer
or TRL; `hkllm train STAGE RECIPE.yaml [key=value ...]` runs it.
"""


def runner(stage: str):
    """The `run(recipe, command) -> metrics` function of a stage (imported lazily: torch is heavy)."""
    if stage in ("base", "cpt"):
        from hkllm.train.pretrain import run
    elif stage == "sft":
        from hkllm.train.sft import run
    elif stage == "dpo":
        from hkllm.train.dpo import run
    else:
        raise ValueError(f"unknown stage {stage!r}")
    return run
