"""Serving: an OpenAI-compatible gateway (app.py) in front of an engine — embedded (engine.py)
or any OpenAI-compatible upstream (upstream.py) — and `hkllm bench serve`, a load generator."""
