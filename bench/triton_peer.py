"""Triton as a peer for the benchmark: the same ONNX model, served by a real Triton server.

Runs in its own virtual environment (nvidia-pytriton pins its own protobuf), started by
`gan-bench compare`. PyTriton starts the tritonserver binary it bundles; Triton's dynamic
batcher groups requests and its Python backend hands each batch to `infer` below, which does
exactly what ganserve's worker does: seed -> latent (the same frozen scheme), ONNX Runtime,
uint8 HWC. Images go back raw (uint8 tensors), the fair match for ganserve's RAW encoding.

    python bench/triton_peer.py --model-dir models/digits/1 --grpc-port 8101 \\
        --http-port 8100 --metrics-port 8102 --max-batch 64
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys

import numpy as np
import onnxruntime as ort

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the numpy-only serving helpers, without installing ganserve
from serve.imaging import to_uint8  # noqa: E402
from serve.latent import seeds_to_latents  # noqa: E402


def main() -> None:
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=pathlib.Path, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument(
        "--workspace",
        type=pathlib.Path,
        default=None,
        help="A folder for PyTriton to create (its copy of tritonserver, sockets, model store) "
        "[default: a new one under ~/.cache/pytriton, left behind when this process is killed].",
    )
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="Model instances, each with its own single-thread session.",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    meta = json.loads((args.model_dir / "metadata.json").read_text())
    latent_dim, conditional = meta["latent_dim"], meta["num_classes"] > 0

    def make_infer():
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(
            str(args.model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

        @batch
        def infer(seed: np.ndarray, class_label: np.ndarray) -> dict[str, np.ndarray]:
            z = seeds_to_latents(seed[:, 0].tolist(), latent_dim)  # (B, latent_dim)
            feeds = {"z": z}
            if conditional:
                feeds["label"] = class_label[:, 0].astype(np.int64)
            return {"image": to_uint8(session.run(None, feeds)[0])}  # (B, H, W, C)

        return infer

    config = TritonConfig(
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        log_verbose=0,
    )
    with Triton(config=config, workspace=args.workspace) as triton:
        triton.bind(
            model_name=meta["name"],
            infer_func=[make_infer() for _ in range(args.instances)],
            inputs=[
                Tensor(name="seed", dtype=np.uint64, shape=(1,)),
                Tensor(name="class_label", dtype=np.int32, shape=(1,)),
            ],
            outputs=[
                Tensor(
                    name="image",
                    dtype=np.uint8,
                    shape=(meta["height"], meta["width"], meta["channels"]),
                )
            ],
            config=ModelConfig(
                max_batch_size=args.max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
            ),
            strict=True,
        )
        print(f"triton ready on grpc port {args.grpc_port}", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
