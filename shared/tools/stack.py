"""The local stack: broker, Redis and every service on one machine, no Docker.

`up` starts the Tansu broker (memory storage), a real redis-server, seeds the
model store with the cold-start model, starts the services (all of them, or
``only`` some: ``("collector", "inference", "miner")`` is an assistant stack
without the trainer) as local processes on free ports, waits until each is healthy, starts the supervisor
(`loopwise.tools.supervise`: a service that exits is started again, with
backoff, and counted in ``restarts``; only the services started here) and writes ``{root}/stack.json`` with
every endpoint and pid; logs go to ``{root}/logs/``. `down` stops the
supervisor first, then everything else by PID; `status` reports what is
alive and healthy, and how often each service was restarted.

Redis always wants a password, generated here (``redis_password``; the Redis
URL carries it). With ``auth`` (``loopwise up`` turns it on, ``--no-auth``
off) the gRPC services also want an API key: one is generated for the
stack's tenants, its hash written to ``{root}/keys.json`` (the services'
``LOOPWISE_API_KEYS_FILE``) and the key itself to ``stack.json``
(``api_key``, the file readable by its owner only), where the demo and the
tools take it from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopwise import auth
from loopwise.modelstore import ModelStore, coldstart
from loopwise.modelstore.contract import DEFAULT_MODEL
from loopwise.tools import procs
from loopwise.topics import Topics, ensure_topics

log = logging.getLogger(__name__)

SERVICES = ("collector", "inference", "miner", "trainer")
GRPC_SERVICES = ("collector", "inference")
WORKERS = ("miner", "trainer")  # no gRPC: ready is their HTTP /readyz
# The local stack retrains often, on little data (about every 100 MovieLens requests of 20
# candidates): production defaults are 10 min / 50,000 examples.
SPECS_FILE = "supervise.json"  # how the supervisor starts each service again
LOCAL_TRAINER_ENV = {"LOOPWISE_TRAINER_INTERVAL_S": "60", "LOOPWISE_TRAINER_EVERY_N": "2000",
                     "LOOPWISE_TRAINER_MIN_EXAMPLES": "1000"}


class StackError(Exception):
    pass


@dataclass
class StackInfo:
    root: str
    kafka: str
    redis: str
    collector: str
    inference: str
    metrics: dict[str, str]
    pids: dict[str, int]
    logs: dict[str, str]
    model_store: str
    tenants: list[str]
    topics: dict[str, str] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    restarts: dict[str, int] = field(default_factory=dict)  # service -> restarts by the supervisor
    api_key: str = ""  # the key of every tenant of the stack ("": the services want none)
    redis_password: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)

    def write(self, root: Path) -> None:
        """``{root}/stack.json`` (mode 0600: it holds the secrets), replaced whole (a reader
        never sees half a file)."""
        tmp = root / f"stack.json.{os.getpid()}.tmp"
        tmp.touch(mode=0o600)
        tmp.write_text(self.to_json())
        os.replace(tmp, root / "stack.json")

    @classmethod
    def read(cls, root: Path) -> StackInfo | None:
        path = root / "stack.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def up(root: Path, *, tenants: tuple[str, ...] = ("default",), partitions: int = 4,
       attribution_window_ms: int = 60_000, extra_env: dict[str, str] | None = None,
       timeout: float = 90.0, supervise: bool = True, only: tuple[str, ...] = SERVICES,
       auth_keys: bool = False) -> StackInfo:
    """Start the stack (see the module); ``auth_keys``: the gRPC services want the generated API key."""
    unknown = sorted(set(only) - set(SERVICES))
    if unknown or not only:
        raise StackError(f"unknown services {unknown} (expected some of {', '.join(SERVICES)})")
    root = root.resolve()
    current = StackInfo.read(root)
    if current is not None and any(procs.pid_alive(p) for p in current.pids.values()):
        raise StackError(f"a stack is already running from {root} (loopwise down first)")
    logs_dir = root / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    started: list[procs.Proc] = []
    try:
        kafka_port, redis_port = procs.free_port(), procs.free_port()
        started.append(procs.start_broker(kafka_port, logs_dir / "kafka.log"))
        redis_password = secrets.token_urlsafe(24)
        started.append(procs.start_redis(redis_port, root / "redis", logs_dir / "redis.log",
                                         password=redis_password))
        bootstrap = f"127.0.0.1:{kafka_port}"
        redis_url = f"redis://:{redis_password}@127.0.0.1:{redis_port}/0"
        api_key = auth.new_key() if auth_keys else ""
        security_env = {}
        if api_key:
            auth.write_keys(root / "keys.json", [(tenant, api_key) for tenant in tenants])
            security_env["LOOPWISE_API_KEYS_FILE"] = str(root / "keys.json")
        topics = Topics.from_env()
        ensure_topics(bootstrap, topics.all(), partitions)
        store_path = root / "models"
        store = ModelStore(str(store_path))
        for tenant in tenants:
            made = coldstart.ensure(store, tenant, DEFAULT_MODEL)
            if made:
                log.info("seeded the cold-start model", extra={"tenant": tenant, "version": made.version})
        env = {
            "LOOPWISE_KAFKA_BOOTSTRAP": bootstrap, "LOOPWISE_REDIS_URL": redis_url,
            "LOOPWISE_TENANTS": ",".join(tenants), "LOOPWISE_MODEL_STORE": str(store_path),
            "LOOPWISE_GRPC_HOST": "127.0.0.1", "LOOPWISE_TOPIC_PARTITIONS": str(partitions),
            "LOOPWISE_ATTRIBUTION_WINDOW_MS": str(attribution_window_ms),
            **security_env, **topics.env(), **(extra_env or {}),
        }
        endpoints: dict[str, str] = {}
        metrics: dict[str, str] = {}
        specs: dict[str, dict[str, Any]] = {}
        # the miner re-reads its changelog after recovery: Tansu under-reports end offsets
        own_env = {"miner": {"LOOPWISE_DATA_DIR": str(root / "miner"), "LOOPWISE_CHANGELOG_CATCH_UP": "true"},
                   "trainer": {"LOOPWISE_DATA_DIR": str(root / "trainer"), **LOCAL_TRAINER_ENV}}
        for name in (n for n in SERVICES if n in only):
            port, mport = procs.free_port(), procs.free_port()
            service_env = {**own_env.get(name, {}), **env, "LOOPWISE_GRPC_PORT": str(port),
                           "LOOPWISE_METRICS_PORT": str(mport)}
            proc = procs.start_service(f"loopwise.{name}", service_env, logs_dir / f"{name}.log")
            started.append(proc)
            specs[name] = {"module": f"loopwise.{name}", "env": service_env, "log": str(proc.log)}
            endpoints[name] = f"127.0.0.1:{port}"
            metrics[name] = f"http://127.0.0.1:{mport}/metrics"
        for proc in started[2:]:
            try:
                _wait_ready(proc.name, endpoints[proc.name], metrics[proc.name], timeout, proc)
            except (TimeoutError, RuntimeError) as exc:
                raise StackError(f"{proc.name} did not become healthy: {exc}\n--- {proc.log}\n{_tail(proc.log)}"
                                 ) from None
        if supervise:
            (root / SPECS_FILE).write_text(json.dumps(specs, indent=2))
            supervisor = procs.start_service("loopwise.tools.supervise", {}, logs_dir / "supervisor.log",
                                             args=("--root", str(root)))
            supervisor.name = "supervisor"
            started.append(supervisor)
        info = StackInfo(root=str(root), kafka=bootstrap, redis=redis_url,
                         collector=endpoints.get("collector", ""), inference=endpoints.get("inference", ""),
                         metrics=metrics,
                         pids={p.name: p.pid for p in started},
                         logs={p.name: str(p.log) for p in started}, model_store=str(store_path),
                         tenants=list(tenants), topics=dataclasses.asdict(topics), api_key=api_key,
                         redis_password=redis_password)
        info.write(root)
        return info
    except BaseException:
        for proc in reversed(started):
            proc.stop()
        raise


def _wait_ready(name: str, endpoint: str, metrics_url: str, timeout: float, proc: procs.Proc | None = None
                ) -> None:
    if name in WORKERS:
        procs.wait_ready(metrics_url, timeout, proc)
    else:
        procs.wait_healthy(endpoint, timeout, proc)


def down(root: Path) -> list[str]:
    root = root.resolve()
    info = StackInfo.read(root)
    if info is None:
        return []
    stopped = []
    supervisor = info.pids.get("supervisor")
    if supervisor is not None and procs.pid_alive(supervisor):  # first: nothing is restarted from here on
        procs.stop_pid(supervisor, timeout=15.0)
        stopped.append("supervisor")
        info = StackInfo.read(root) or info  # the pids of the services it restarted
    order = [n for n in info.pids if n not in ("kafka", "redis", "supervisor")] + ["redis", "kafka"]
    for name in order:
        pid = info.pids.get(name)
        if pid is not None and procs.pid_alive(pid):
            procs.stop_pid(pid, timeout=15.0)
            stopped.append(name)
    (root / "stack.json").unlink(missing_ok=True)
    (root / SPECS_FILE).unlink(missing_ok=True)
    (root / "keys.json").unlink(missing_ok=True)
    return stopped


def status(root: Path) -> dict[str, Any]:
    """{part: {"pid", "alive", "healthy"?, "restarts"?, "endpoint"}} for a stack, or {} if none
    (``restarts``: how often the supervisor started a service again)."""
    info = StackInfo.read(root.resolve())
    if info is None:
        return {}
    out: dict[str, Any] = {}
    endpoints = {"kafka": info.kafka, "redis": info.redis, "collector": info.collector,
                 "inference": info.inference, "miner": info.metrics.get("miner", ""),
                 "trainer": info.metrics.get("trainer", "")}
    for name, pid in info.pids.items():
        entry: dict[str, Any] = {"pid": pid, "alive": procs.pid_alive(pid), "endpoint": endpoints.get(name, "")}
        if name in SERVICES:
            entry["restarts"] = info.restarts.get(name, 0)
        if name in SERVICES and entry["alive"]:
            try:
                _wait_ready(name, endpoints.get(name, ""), info.metrics.get(name, ""), timeout=2.0)
                entry["healthy"] = True
            except (TimeoutError, RuntimeError):
                entry["healthy"] = False
        out[name] = entry
    return out
