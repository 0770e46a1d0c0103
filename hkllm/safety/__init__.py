"""Safeguards over text: watermarking of generated answers (watermark.py) and guards (guard.py)."""
