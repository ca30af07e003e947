"""The committed stubs in shared/v1 must be what `make protos` generates now."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools not installed")
def test_generated_code_is_fresh(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_protos
    finally:
        sys.path.pop(0)
    gen_protos.generate(tmp_path)
    committed = {p.name: p.read_bytes() for p in (ROOT / "shared" / "v1").iterdir() if p.is_file()}
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert sorted(fresh) == sorted(committed), "files differ: run `make protos`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated code {stale}: run `make protos`"
