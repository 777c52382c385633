"""The gRPC server: model repository, batching, ONNX Runtime engines, metrics.

Nothing under `ganserve.serve` imports torch, `ganserve.train` or `ganserve.export`.
"""
