"""Generated stubs of the KServe v2 subset gan-bench speaks to Triton.

Regenerate with `python proto/generate.py`.
"""
