"""港文通-style document assistant: the pure-Python parts (no web routes yet).

- `hkllm.app.templates`: document templates as data (YAML: fields, skeleton, rules) and their loader.
- `hkllm.app.format_check`: Hong Kong official-writing rules, each failure with a fix where one exists.
- `hkllm.app.retrieval`: documents → passages → a SQLite FTS5 index on character unigrams/bigrams,
  `[n]` citations, quote verification, unreadable-text refusal, per-owner expiry.
"""
