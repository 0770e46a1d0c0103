"""The gateway's watermark: every answer of the embedded engine marked, and detection over HTTP.

    hkllm serve runs/quickstart/dpo                      # --watermark on (the default)
    curl -s localhost:8000/v1/watermark/detect -H "Authorization: Bearer $HKLLM_KEY" \\
         -H 'Content-Type: application/json' -d '{"input": ["一段要檢查的文字……"]}'

The algorithm is hkllm/safety/watermark.py; this is the serving side of it:

- the key is made on first start in the state folder (`watermark.key`, mode 0600) and read from
  there afterwards: `hkllm watermark detect --state-dir` reads the same file. It is never logged
  or returned; what is shown (audit rows, system_fingerprint, detection results) is the config
  id, a one-way hash of the settings and the key;
- `attach` gives each request a fresh per-row processor, last in its logits processors (a
  Gumbel processor allows one token: whatever runs after it would be overruled). Greedy and
  low-temperature requests get the green-list bias, sampled ones Gumbel-max;
- a client cannot switch it off: `"watermarking": false` in a request is dropped (and the audit
  row says so) unless the key is listed in `Settings.watermark_exempt_keys`;
- an upstream engine (vLLM, SGLang, llama-server) samples on its own machine: the gateway cannot
  mark its text (it would need the logits). Turn on the upstream's own watermark (vLLM
  `--watermark-config`) and give its key to `hkllm watermark detect`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hkllm.safety.watermark import WatermarkConfig, compile_kernels, detect, load_or_create_key, watermark_processor
from hkllm.serve.protocol import GenerationRequest


class Watermarker:
    """The key, the settings and the tokenizer the answers are marked (and detected) with."""

    def __init__(self, state_dir: Path, tokenizer, config: WatermarkConfig | None = None,
                 exempt_keys: tuple[str, ...] = ()):
        self.config = config or WatermarkConfig()
        self.key = load_or_create_key(state_dir)
        self.tokenizer, self.exempt_keys = tokenizer, set(exempt_keys)
        self.config_id = self.config.config_id(self.key)
        compile_kernels()

    def attach(self, request: GenerationRequest, key=None) -> tuple[GenerationRequest, str]:
        """The request with its watermark processor last, and what the audit row records: the
        config id, "exempt" (an exempt key asked for no watermark) or "none" (greedy under a
        Gumbel-only config: nothing to mark)."""
        if request.watermark_opt_out and key is not None and (key.id in self.exempt_keys or key.name in self.exempt_keys):
            return request, "exempt"
        p = request.params
        proc = watermark_processor(self.config, self.key, p.temperature, top_p=p.top_p)
        if proc.scheme == "none":
            return request, "none"
        params = dataclasses.replace(p, logits_processors=(*p.logits_processors, proc))
        return dataclasses.replace(request, params=params), f"{self.config_id}:{proc.scheme}"

    def detect(self, texts: list[str], alpha: float = 0.01) -> dict:
        """POST /v1/watermark/detect's answer: one `hkllm.safety.watermark.detect` result per text."""
        results = [detect(t, self.tokenizer, self.key, self.config, alpha=float(alpha)) for t in texts]
        return {"object": "list", "config_id": self.config_id, "results": results}
