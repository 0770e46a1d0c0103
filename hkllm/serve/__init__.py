"""Serving: an OpenAI-compatible gateway and engines behind it (issue 4, in progress), and
`hkllm bench serve`, a load generator for any OpenAI-compatible server."""
