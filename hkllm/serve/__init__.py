"""Serving: an OpenAI-compatible gateway (app.py: routes; gateway.py: the request path; guards.py:
request and response guards) in front of an engine that implements the contract in contract.py —
embedded (engine.py) or any OpenAI-compatible upstream (upstream.py) — and `hkllm bench serve`,
a load generator. docs/ARCHITECTURE.md draws both."""
