"""Generated stubs for the ganserve.v1 contract (regenerate with `python proto/generate.py`)."""
