import os

# Tests never reach a model hub: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Numerics that tests compare (engine vs generate, logprobs) must not depend on whether this CPU has bf16.
os.environ.setdefault("HKLLM_PRECISION", "fp32")
