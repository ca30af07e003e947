"""``python -m loopwise.tools.supervise --root R``: restart the local stack's
services when they exit, as Kubernetes restarts a pod's container.

`loopwise up` starts one supervisor per stack, detached, after every service
is healthy; its pid is ``pids["supervisor"]`` in ``{root}/stack.json`` and it
reads how to start each service from ``{root}/supervise.json`` (module, the
service's ``LOOPWISE_*`` environment, log file: the same ports again, so the
endpoints in ``stack.json`` stay valid).

Every ``poll_s`` it checks each service's pid. A service that exited (a
crash, ``kill -9``, an OOM kill, a clean exit) is started again after a
backoff: ``backoff_s`` doubled for every exit in a row that came less than
``stable_s`` after its start, capped at ``max_backoff_s`` (a crash loop
slows down; a service that ran ``stable_s`` starts counting afresh). Each
restart writes the new pid and the service's restart count (``restarts``)
to ``stack.json`` and logs one line; ``loopwise status`` shows the counts.
The broker and Redis are not restarted (their data lives in memory), and
only the services `up` started are supervised (``loopwise up --only``): a
service without a pid in ``stack.json`` is never started from here.

On SIGTERM (``loopwise down`` stops the supervisor first) it finishes the
step in progress, so a service it just started is in ``stack.json`` before
it exits, and ``down`` stops that one too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from loopwise import logs
from loopwise.tools import procs
from loopwise.tools.stack import SPECS_FILE, StackInfo

log = logging.getLogger("loopwise.supervise")


@dataclass
class Backoff:
    """The delay before the next start of one service."""

    base_s: float = 0.5
    cap_s: float = 30.0
    stable_s: float = 30.0
    failures: int = 0  # exits in a row that came less than stable_s after a start

    def after_exit(self, ran_s: float) -> float:
        if ran_s >= self.stable_s:
            self.failures = 0
        delay = min(self.base_s * 2 ** self.failures, self.cap_s)
        self.failures += 1
        return delay


@dataclass
class Supervisor:
    root: Path
    specs: dict[str, dict]
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    stable_s: float = 30.0
    poll_s: float = 0.2
    stopping: bool = False
    _children: dict[str, procs.Proc] = field(default_factory=dict)  # started here: reaped here
    _started: dict[str, float] = field(default_factory=dict)  # name -> monotonic start time
    _due: dict[str, float] = field(default_factory=dict)  # name -> monotonic time of the next start
    _backoff: dict[str, Backoff] = field(default_factory=dict)

    def alive(self, name: str, pid: int) -> bool:
        child = self._children.get(name)
        if child is not None and child.pid == pid and child.popen is not None:
            return child.popen.poll() is None
        return procs.pid_alive(pid)

    def step(self, now: float) -> bool:
        """One check of every service; False once the stack is gone."""
        info = StackInfo.read(self.root)
        if info is None:
            return False
        changed = False
        for name, spec in self.specs.items():
            pid = info.pids.get(name)
            if pid is None:  # not started by `up` (--only): not ours to start
                continue
            if name not in self._due:
                if pid is not None and self.alive(name, pid):
                    continue
                backoff = self._backoff.setdefault(name, Backoff(self.backoff_s, self.max_backoff_s, self.stable_s))
                delay = backoff.after_exit(now - self._started.get(name, float("-inf")))
                self._due[name] = now + delay
                code = self._children[name].popen.poll() if name in self._children else None
                log.warning("service exited; restarting it", extra={"service": name, "pid": pid, "exit_code": code,
                                                                   "in_s": delay, "restarts": info.restarts.get(name, 0)})
            elif now >= self._due[name]:
                del self._due[name]
                proc = procs.start_service(spec["module"], spec["env"], Path(spec["log"]))
                self._children[name] = proc
                self._started[name] = now
                info.pids[name] = proc.pid
                info.restarts[name] = info.restarts.get(name, 0) + 1
                changed = True
                log.warning("service restarted", extra={"service": name, "pid": proc.pid,
                                                        "restarts": info.restarts[name]})
        if changed:
            info.write(self.root)
        return True

    def run(self) -> None:
        while not self.stopping and self.step(time.monotonic()):
            time.sleep(self.poll_s)


def _wait_named(root: Path, timeout: float = 30.0) -> bool:
    """Until ``stack.json`` names this process as the stack's supervisor (`up` writes it after the start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = StackInfo.read(root)
        if info is not None and info.pids.get("supervisor") == os.getpid():
            return True
        time.sleep(0.05)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loopwise.tools.supervise", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--backoff-s", type=float, default=0.5)
    parser.add_argument("--max-backoff-s", type=float, default=30.0)
    parser.add_argument("--stable-s", type=float, default=30.0)
    parser.add_argument("--poll-s", type=float, default=0.2)
    args = parser.parse_args(argv)
    logs.setup("INFO")
    root = args.root.resolve()
    if not _wait_named(root):
        log.error("stack.json does not name this supervisor; exiting")
        return 1
    specs = json.loads((root / SPECS_FILE).read_text())
    sup = Supervisor(root, specs, backoff_s=args.backoff_s, max_backoff_s=args.max_backoff_s,
                     stable_s=args.stable_s, poll_s=args.poll_s)

    def stop(signum: int, frame: object) -> None:
        sup.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("supervising", extra={"services": sorted(specs)})
    sup.run()
    log.info("supervisor stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
