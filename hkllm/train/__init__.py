"""Training stages: base (from scratch), cpt (continued pre-training with replay), sft, dpo.

Each stage is one readable recipe module (setup → train → save) over transformers' Trainer
or TRL; `hkllm train STAGE RECIPE.yaml [key=value ...]` runs it.
"""
