"""hkllm's tasks for lm-evaluation-harness, one YAML file per task as in lm-eval's own lm_eval/tasks/.

    lm_eval --include_path hkllm/eval/lm_eval_tasks --tasks hk_knowledge_mc --model local-completions ...
    hkllm eval --backend lm-eval --tasks hk_knowledge_mc ...          # passes this folder itself

The data are hkllm's shipped evaluation sets, found through hkllm.assets (checkout or wheel).
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def hk_knowledge(**kwargs):
    """data/eval/hk_knowledge.jsonl as the task's test split (`custom_dataset` in hk_knowledge_mc.yaml)."""
    import datasets

    from hkllm import assets

    return datasets.load_dataset("json", data_files={"test": str(assets.path("data/eval/hk_knowledge.jsonl"))})
