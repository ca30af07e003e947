"""Generate the Python stubs for protos/loopwise/v1 into shared/v1.

Usage: python scripts/gen_protos.py [--out DIR]

The output is deterministic: the same protos and grpcio-tools give the same
files, which is what tests/unit/test_protos_fresh.py checks.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
DEFAULT_OUT = ROOT / "shared" / "v1"
INIT = '"""Generated protobuf and gRPC stubs for loopwise.v1 (make protos)."""\n'


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc  # dev dependency only

    protos = sorted((PROTO_DIR / "loopwise" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--pyi_out={tmp}",
            *[str(p.relative_to(PROTO_DIR)) for p in protos],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*_pb2*.py*"):
            old.unlink()
        written = []
        for f in sorted((Path(tmp) / "loopwise" / "v1").iterdir()):
            dest = out / f.name
            shutil.copyfile(f, dest)
            written.append(dest)
        (out / "__init__.py").write_text(INIT)
        written.append(out / "__init__.py")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
