"""Evaluation: tasks, metrics, reports and the release gate (hkllm eval, hkllm gate)."""
