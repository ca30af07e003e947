"""`loopwise up / status / down` as a user runs them: real processes, real ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest

from loopwise.client import Client
from loopwise.tools import procs
from loopwise.tools import stack as stack_tool
from tests.integration.kafka_read import read_events

pytestmark = pytest.mark.slow


def cli(root, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "loopwise.tools.cli", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    up = cli(root, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    info = json.loads((root / "stack.json").read_text())
    yield root, info
    current = current_pids(root)
    cli(root, "down")
    for pid in {*info["pids"].values(), *current.values()}:
        if procs.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def current_pids(root) -> dict[str, int]:
    """The stack's pids now (the supervisor rewrites them when it restarts a service)."""
    path = root / "stack.json"
    return json.loads(path.read_text())["pids"] if path.exists() else {}


def test_stack_json_names_every_endpoint(stack):
    root, info = stack
    for key in ("collector", "inference", "kafka", "redis"):
        assert info[key]
    assert set(info["metrics"]) == {"collector", "inference", "miner", "trainer"}
    for url in info["metrics"].values():
        assert b"loopwise_" in urllib.request.urlopen(url, timeout=5).read()
    assert (root / "logs" / "collector.log").exists()
    status = cli(root, "status")
    assert status.returncode == 0, status.stdout
    assert status.stdout.count(" up ") == 7  # broker, Redis, four services, the supervisor
    assert status.stdout.count("restarts 0") == 4


def test_traffic_flows_through_the_stack(stack):
    _, info = stack
    with Client(info["collector"], info["inference"], api_key=info["api_key"]) as lw:
        ranked = lw.rank(["m1", "m2", "m3"], user_id="u1", request_id="e2e-1",
                         features={"popularity": [0.1, 0.9, 0.5]})
        assert ranked.top(1) == ["m2"] and ranked.version == "v1"
        response = lw.report([lw.events.click(ranked.request_id, "m2", user_id="u1", position=1)])
        assert response.accepted == 1
    events = read_events(info["kafka"], "loopwise.events.v1", want=1)
    assert any(e.request_id == "e2e-1" and e.WhichOneof("body") == "click" for e in events)
    impressions = read_events(info["kafka"], "loopwise.impressions.v1", want=1)
    assert any(e.request_id == "e2e-1" for e in impressions)


def test_second_up_refuses(stack):
    root, _ = stack
    again = cli(root, "up")
    assert again.returncode == 1 and "already running" in again.stderr


def test_killed_services_are_restarted_with_backoff_and_counted(stack):
    root, info = stack
    killed = ("inference", "miner")
    for name in killed:
        os.kill(info["pids"][name], signal.SIGKILL)
    deadline = time.monotonic() + 90
    while True:
        parts = stack_tool.status(root)
        if all(parts[n]["alive"] and parts[n].get("healthy") and parts[n]["restarts"] == 1 for n in killed):
            break
        assert time.monotonic() < deadline, f"not restarted and healthy within 90 s: {parts}"
        time.sleep(0.5)
    assert all(parts[n]["pid"] != info["pids"][n] for n in killed)
    assert parts["collector"]["restarts"] == parts["trainer"]["restarts"] == 0
    with Client(info["collector"], info["inference"], api_key=info["api_key"]) as lw:  # the same endpoints as before
        assert lw.rank(["m1", "m2"], features={"popularity": [0.1, 0.9]}).top(1) == ["m2"]
    status = cli(root, "status")
    assert status.returncode == 0 and status.stdout.count("restarts 1") == 2, status.stdout
    assert (root / "logs" / "supervisor.log").read_text().count("service restarted") == 2


def test_sigterm_drains_without_failing_in_flight_calls(stack):
    root, info = stack
    info = {**info, "pids": current_pids(root)}
    calls: list[tuple[float, str]] = []  # (start time, outcome)
    stop = threading.Event()

    def hammer():
        with Client(inference=info["inference"], timeout=5, api_key=info["api_key"]) as lw:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    lw.rank([f"m{i}" for i in range(100)])
                    calls.append((started, "OK"))
                except grpc.RpcError as exc:
                    calls.append((started, exc.code().name))
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        return

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    pid = info["pids"]["inference"]
    sigterm_at = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while procs.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(10)
    assert not procs.pid_alive(pid), "inference did not exit after SIGTERM"
    # Every call in flight when SIGTERM came, and during the drain, succeeded;
    # calls made once the server stopped fail UNAVAILABLE (or CANCELLED when
    # they raced the listener's close), which a client retries elsewhere.
    in_flight = [code for started, code in calls if started < sigterm_at + 0.5]
    assert len(in_flight) > 10 and set(in_flight) == {"OK"}, set(in_flight)
    assert {code for _, code in calls} <= {"OK", "UNAVAILABLE", "CANCELLED"}
    log = open(info["logs"]["inference"]).read()
    assert "draining" in log and '"stopped"' in log


def test_down_stops_everything(stack):
    root, info = stack
    current = current_pids(root)
    assert "supervisor" in current
    down = cli(root, "down")
    assert down.returncode == 0
    assert not any(procs.pid_alive(p) for p in [*info["pids"].values(), *current.values()])
    assert cli(root, "status").returncode == 1


def test_up_only_starts_an_assistant_stack_without_the_trainer(tmp_path):
    """`loopwise up --root R --only collector,inference,miner` (``--root`` after the subcommand, as
    the README writes it): those services, supervised; no trainer anywhere."""
    run = [sys.executable, "-m", "loopwise.tools.cli"]
    up = subprocess.run([*run, "up", "--root", str(tmp_path), "--only", "collector,inference,miner"],
                        capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        info = json.loads((tmp_path / "stack.json").read_text())
        assert set(info["pids"]) == {"kafka", "redis", "collector", "inference", "miner", "supervisor"}
        assert set(json.loads((tmp_path / stack_tool.SPECS_FILE).read_text())) == {"collector", "inference", "miner"}
        status = subprocess.run([*run, "status", "--root", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "trainer" not in status.stdout, status.stdout
        with Client(info["collector"], info["inference"], api_key=info["api_key"]) as lw:
            assert not lw.rewrite("play heet").rewritten
    finally:
        info = json.loads((tmp_path / "stack.json").read_text()) if (tmp_path / "stack.json").exists() else {}
        subprocess.run([*run, "down", "--root", str(tmp_path)], capture_output=True, timeout=120)
        for pid in info.get("pids", {}).values():
            if procs.pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
