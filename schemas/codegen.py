"""Regenerate the Python code of every .proto under schemas/.

Run ``python -m schemas.codegen`` from the repository root after editing a
.proto file; ``python -m schemas.codegen --check`` exits 1 when the committed
generated code differs from what the protos produce (tests run it).

Protos are compiled with the repository root as include path, so generated
modules import each other as ``schemas.heatmap.v1.heatmap_pb2`` and never
clash with the top-level ``heatmap`` package.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = (
    "schemas/heatmap/v1/heatmap.proto",
    "schemas/kafka/v1/touch_batch.proto",
)
# Files that get a gRPC service module besides the message module.
SERVICES = frozenset({"schemas/heatmap/v1/heatmap.proto"})


def _outputs(proto: str) -> list[str]:
    stem = proto.removesuffix(".proto")
    names = [f"{stem}_pb2.py", f"{stem}_pb2.pyi"]
    if proto in SERVICES:
        names += [f"{stem}_pb2_grpc.py", f"{stem}_pb2_grpc.pyi"]
    return names


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    # The mypy-protobuf plugins live beside the interpreter (the venv's bin/),
    # which need not be on PATH.
    bindir = Path(sys.executable).parent
    plugins = [
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
    ]
    for proto in PROTOS:
        args = [
            "protoc",
            *plugins,
            f"-I{ROOT}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--mypy_out={out_dir}",
        ]
        if proto in SERVICES:
            args += [f"--grpc_python_out={out_dir}", f"--mypy_grpc_out={out_dir}"]
        if protoc.main([*args, str(ROOT / proto)]) != 0:
            raise SystemExit(f"protoc failed on {proto}")


def stale_files() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = []
        for proto in PROTOS:
            for name in _outputs(proto):
                fresh, committed = Path(tmp) / name, ROOT / name
                if not committed.exists() or not filecmp.cmp(fresh, committed, shallow=False):
                    stale.append(name)
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated code, run `python -m schemas.codegen`:", *stale, sep="\n  ")
            return 1
        print("generated code is up to date")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for proto in PROTOS:
            for name in _outputs(proto):
                shutil.copyfile(Path(tmp) / name, ROOT / name)
    print("regenerated:", ", ".join(PROTOS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
