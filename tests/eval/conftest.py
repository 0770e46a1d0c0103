"""The live-server fixtures of tests/serve (a tiny random chat model behind `hkllm serve`)."""

from tests.serve.conftest import engine, model_dir, serve  # noqa: F401
