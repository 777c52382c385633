"""Regenerate the Python stubs for every .proto under proto/.

    python proto/generate.py            # rewrite the stubs in place
    python proto/generate.py --out DIR  # write them under DIR instead (the staleness test does)

The stubs are committed so the serving install needs no code generator; a test fails when
they no longer match what this script produces.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

PROTO_ROOT = pathlib.Path(__file__).resolve().parent


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    """Run protoc on every .proto under proto/; return the files written."""
    from grpc_tools import protoc  # dev dependency, pinned in pyproject.toml

    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {protos}")
    return sorted(p for p in out.rglob("*_pb2*.py*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=PROTO_ROOT, help="output root")
    written = generate(parser.parse_args().out)
    for path in written:
        print(path)


if __name__ == "__main__":
    sys.exit(main())
