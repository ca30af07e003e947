"""The supervisor's restart backoff: doubling while a service keeps crashing soon
after its start, capped, and afresh once it ran long enough."""

from __future__ import annotations

from loopwise.tools.supervise import Backoff


def test_backoff_doubles_for_quick_crashes_is_capped_and_resets_after_a_stable_run():
    b = Backoff(base_s=0.5, cap_s=4.0, stable_s=30.0)
    assert b.after_exit(ran_s=3600) == 0.5  # a crash after a long run: restarted soon
    assert [b.after_exit(ran_s=1) for _ in range(5)] == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.after_exit(ran_s=30) == 0.5


def test_an_exited_service_is_started_again_after_its_backoff_and_counted(tmp_path, monkeypatch):
    from loopwise.tools import procs
    from loopwise.tools.stack import StackInfo
    from loopwise.tools.supervise import Supervisor

    info = StackInfo(root=str(tmp_path), kafka="", redis="", collector="", inference="", metrics={},
                     pids={"miner": 999_999_999}, logs={}, model_store="", tenants=[])
    info.write(tmp_path)
    started = []

    def fake_start(module, env, log):
        started.append(module)
        return procs.Proc("miner", None, 4242, log)

    monkeypatch.setattr(procs, "start_service", fake_start)
    monkeypatch.setattr(procs, "pid_alive", lambda pid: pid == 4242)
    sup = Supervisor(tmp_path, {"miner": {"module": "loopwise.miner", "env": {}, "log": str(tmp_path / "m.log")}})
    assert sup.step(100.0) and not started  # seen dead: due in backoff_s
    assert sup.step(100.2) and not started
    assert sup.step(100.6) and started == ["loopwise.miner"]
    assert sup.step(101.0) and started == ["loopwise.miner"]  # alive now: left alone
    after = StackInfo.read(tmp_path)
    assert after.pids["miner"] == 4242 and after.restarts == {"miner": 1}


def test_only_the_services_up_started_are_supervised(tmp_path, monkeypatch):
    from loopwise.tools import procs
    from loopwise.tools.stack import StackInfo
    from loopwise.tools.supervise import Supervisor

    StackInfo(root=str(tmp_path), kafka="", redis="", collector="", inference="", metrics={},
              pids={"miner": 4242}, logs={}, model_store="", tenants=[]).write(tmp_path)
    started = []
    monkeypatch.setattr(procs, "start_service", lambda module, env, log: started.append(module))
    monkeypatch.setattr(procs, "pid_alive", lambda pid: pid == 4242)
    specs = {n: {"module": f"loopwise.{n}", "env": {}, "log": str(tmp_path / f"{n}.log")} for n in ("miner", "trainer")}
    sup = Supervisor(tmp_path, specs)
    for now in (100.0, 101.0, 200.0):
        assert sup.step(now)
    assert started == []  # the trainer was not started by `up --only`: never started here
