"""Hong Kong text toolkit: script conversion, variety detection, personal-data redaction, and
checks on an answer's text (refusal, Simplified leaks: hkllm/text/checks.py).

Used by every other stage (data pipeline, evaluation, serving audit log, safeguards), and on the
command line as `hkllm text convert|detect|redact` (stdin → stdout, one line in, one line out).
"""

from hkllm.text.checks import is_refusal, simplified_leak
from hkllm.text.convert import TARGETS, clean, convert
from hkllm.text.detect import VARIETIES, Detection, detect
from hkllm.text.redact import is_valid_hkid, luhn_valid, redact, redact_with_counts

__all__ = [
    "TARGETS", "VARIETIES", "Detection", "clean", "convert", "detect", "is_refusal", "is_valid_hkid", "luhn_valid",
    "redact", "redact_with_counts", "simplified_leak",
]
