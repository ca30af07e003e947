"""The model store: ``{root}/{tenant}/{model}/{version}/`` with ``model.onnx``,
``manifest.json`` (metrics, feature spec, parent version, sha256) and any
extra files the publisher adds (the trainer's ``weights.pt``).

``root`` is a local directory by default and any fsspec URL otherwise (e.g.
``s3://bucket/models`` with s3fs installed). A version directory is complete
once its manifest exists: the artifact and the extra files are written first,
the manifest last, so a publisher that crashes in between leaves a directory
no reader sees. Versions are ``v1``, ``v2``, ... in publication order.

``{root}/{tenant}/{model}/pointer.json`` persists the serving pointer and its
history (`read_pointer`, `write_pointer`; written by
`loopwise.modelstore.pointers` with every move, next to Redis's copy), so a
reader that finds Redis empty still knows the version last promoted.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec

from loopwise.features import FeatureSpec

from . import contract

_VERSION = re.compile(r"^v(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ARTIFACT_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
POINTER_FILE = "pointer.json"


class StoreError(Exception):
    pass


def check_name(kind: str, value: str) -> str:
    if not _NAME.match(value):
        raise StoreError(f"invalid {kind} {value!r}: letters, digits, '_', '.', '-' (max 64)")
    return value


@dataclass
class Manifest:
    tenant: str
    model: str
    version: str
    sha256: str
    feature_spec: dict[str, Any]
    hidden_dim: int
    parent_version: str = ""
    created_at: float = field(default_factory=time.time)
    metrics: dict[str, Any] = field(default_factory=dict)
    # Names of the ONNX inputs and outputs the serving contract relies on.
    inputs: list[str] = field(default_factory=lambda: list(contract.INPUTS))
    outputs: list[str] = field(default_factory=lambda: list(contract.OUTPUTS))
    source: str = ""

    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.feature_spec)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def version_number(version: str) -> int:
    m = _VERSION.match(version)
    if not m:
        raise StoreError(f"invalid version {version!r}: expected v<N>")
    return int(m.group(1))


class ModelStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def models(self) -> list[tuple[str, str]]:
        """(tenant, model) pairs that have at least one complete version."""
        out = []
        for tenant in self._dirs(self._path()):
            for model in self._dirs(self._path(tenant)):
                if self.versions(tenant, model):
                    out.append((tenant, model))
        return out

    def versions(self, tenant: str, model: str) -> list[str]:
        found = []
        for name in self._dirs(self._path(tenant, model)):
            if _VERSION.match(name) and self.fs.exists(self._path(tenant, model, name, MANIFEST_FILE)):
                found.append(name)
        return sorted(found, key=version_number)

    def latest(self, tenant: str, model: str) -> str | None:
        versions = self.versions(tenant, model)
        return versions[-1] if versions else None

    def manifest(self, tenant: str, model: str, version: str) -> Manifest:
        path = self._path(tenant, model, version, MANIFEST_FILE)
        try:
            with self.fs.open(path, "rt") as f:
                return Manifest.from_json(f.read())
        except FileNotFoundError:
            raise StoreError(f"no manifest at {path}") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"corrupt manifest at {path}: {exc}") from None

    def load(self, tenant: str, model: str, version: str) -> tuple[bytes, Manifest]:
        """The artifact and its manifest, the artifact checked against its sha256."""
        manifest = self.manifest(tenant, model, version)
        path = self._path(tenant, model, version, ARTIFACT_FILE)
        try:
            with self.fs.open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise StoreError(f"no artifact at {path}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != manifest.sha256:
            raise StoreError(f"artifact {path} is corrupt: sha256 {digest[:12]} != manifest {manifest.sha256[:12]}")
        return data, manifest

    def extra(self, tenant: str, model: str, version: str, name: str, *, sha256: str = "") -> bytes:
        """An extra file published with a version, checked against ``sha256`` when given."""
        path = self._path(tenant, model, version, check_name("file", name))
        try:
            with self.fs.open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise StoreError(f"no file at {path}") from None
        if sha256:
            digest = hashlib.sha256(data).hexdigest()
            if digest != sha256:
                raise StoreError(f"file {path} is corrupt: sha256 {digest[:12]} != expected {sha256[:12]}")
        return data

    def publish(self, tenant: str, model: str, artifact: bytes, *, feature_spec: FeatureSpec,
                hidden_dim: int, parent_version: str = "", metrics: dict[str, Any] | None = None,
                source: str = "", extras: Mapping[str, bytes] | None = None) -> Manifest:
        """Write a new version: the artifact, then ``extras`` ({file name: bytes}), then the manifest."""
        check_name("tenant", tenant)
        check_name("model", model)
        extras = dict(extras or {})
        for name in extras:
            if check_name("file", name) in (ARTIFACT_FILE, MANIFEST_FILE):
                raise StoreError(f"extra file {name!r} would replace the store's own")
        latest = self.latest(tenant, model)
        number = version_number(latest) + 1 if latest else 1
        while self.fs.exists(self._path(tenant, model, f"v{number}")):
            number += 1  # an incomplete directory left by a crashed publisher
        version = f"v{number}"
        manifest = Manifest(tenant=tenant, model=model, version=version,
                            sha256=hashlib.sha256(artifact).hexdigest(),
                            feature_spec=feature_spec.to_dict(), hidden_dim=hidden_dim,
                            parent_version=parent_version, metrics=dict(metrics or {}), source=source)
        base = self._path(tenant, model, version)
        self.fs.makedirs(base, exist_ok=True)
        for name, data in ((ARTIFACT_FILE, artifact), *extras.items()):
            with self.fs.open(f"{base}/{name}", "wb") as f:
                f.write(data)
        with self.fs.open(f"{base}/{MANIFEST_FILE}", "wt") as f:
            f.write(manifest.to_json())
        return manifest

    def _dirs(self, path: str) -> list[str]:
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory")

    # Additive helpers (inference's watcher, the `loopwise model` CLI).

    def latest_versions(self, tenants: list[str] | tuple[str, ...]) -> dict[tuple[str, str], str]:
        """{(tenant, model): newest complete version} for the given tenants, one listing each."""
        out: dict[tuple[str, str], str] = {}
        for tenant in tenants:
            for model in self._dirs(self._path(tenant)):
                latest = self.latest(tenant, model)
                if latest is not None:
                    out[(tenant, model)] = latest
        return out

    def manifests(self, tenant: str, model: str) -> list[Manifest]:
        """Every complete version's manifest, oldest first (unreadable ones skipped)."""
        out = []
        for version in self.versions(tenant, model):
            try:
                out.append(self.manifest(tenant, model, version))
            except StoreError:
                continue
        return out

    # The persisted pointer (`loopwise.modelstore.pointers` moves it with Redis's copy).

    def read_pointer(self, tenant: str, model: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(pointer, history newest first) persisted for (tenant, model); (None, []) when none or unreadable."""
        path = self._path(tenant, model, POINTER_FILE)
        try:
            with self.fs.open(path, "rt") as f:
                data = json.loads(f.read())
            version = data.get("version") or None
            entries = [e for e in data.get("history", []) if isinstance(e, dict)]
        except FileNotFoundError:
            return None, []
        except (ValueError, AttributeError, TypeError):
            return None, []
        return (version if isinstance(version, str) and _VERSION.match(version) else None), entries

    def write_pointer(self, tenant: str, model: str, version: str, entries: list[dict[str, Any]]) -> None:
        """Persist the pointer and its history (written to a temporary file, then moved over)."""
        check_name("tenant", tenant)
        check_name("model", model)
        version_number(version)
        base = self._path(tenant, model)
        self.fs.makedirs(base, exist_ok=True)
        tmp = f"{base}/.{POINTER_FILE}.{time.time_ns()}"
        with self.fs.open(tmp, "wt") as f:
            f.write(json.dumps({"version": version, "history": entries}, indent=1))
        self.fs.mv(tmp, f"{base}/{POINTER_FILE}")
