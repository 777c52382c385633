"""A small Python client for ganserve (no torch, no server code).

from ganserve.client import GeneratorClient

with GeneratorClient("localhost:50051") as client:
    result = client.generate(seed=42, class_label=7)
    result.save("seven.png")
    print(result.pixels.shape)  # (32, 32, 1) uint8
"""

from ganserve.client.client import (
    GeneratedImage,
    GeneratorClient,
    ImageEncoding,
    ReplyError,
    RetryPolicy,
)

__all__ = ["GeneratedImage", "GeneratorClient", "ImageEncoding", "ReplyError", "RetryPolicy"]
