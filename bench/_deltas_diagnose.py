"""Why the stack's sparse deltas learn less than the same `DeltaTrainer` in process.

Two steps:

- ``capture OUT.pkl -- <bench/learning.py arguments>``: runs bench/learning.py
  (through the real stack) with its example reader also keeping every raw record
  of the examples, models and deltas topics (topic, partition, offset, Kafka
  timestamp, value) and the stack's model store (``--keep``); pickled to OUT
  (the first stack run: the default configuration; later ones to OUT.1.pkl, ...).
- ``replay OUT.pkl [--lags MS,..] [--variants ips1,same_step,final]``: first what the
  stack served (each pair's first example carries `Rank`'s score), how late each new
  base's first delta came, the guard's rollbacks, how soon a (user, item) shown before
  is shown again; then the captured examples in their produce order through
  `loopwise.trainer.deltas.DeltaTrainer` on the versions the stack published (each from
  its announcement's produce time), a step every ``--step-ms`` of produce time, as the
  delta loop does; each (request, candidate) scored at its first example (its
  impression) by the base alone and by what serves: the stack's own deltas from the
  topic ``lag`` ms after their produce time, or the replayed steps' deltas ``lag`` ms
  after the step; AUC against the final labels. Variants of the inputs: ``ips1`` (no
  IPS weight on positives), ``same_step`` (a positive at its fake negative's time),
  ``final`` (one row per pair with its final label, weight 1, no FNW).

Measured on a ``--quick --feedback-mode default`` capture (2 loaded cores): the stack
served AUC 0.7186 (its bases alone 0.718); the same examples and bases through
`DeltaTrainer` in process, deltas served at once, 0.778; the stack's own deltas served
100 ms after they were produced 0.763, 1.5 s after 0.729. The deltas are right; they
come too late: 54% of shown (user, item) pairs were shown to that user before (never a
click in this replay: negatives are drawn from items the user never rates), 57% of
those again within 0.5 s, 73% within 1.5 s, and that memory is most of what a delta
teaches. A new version's first delta came 1.7-6.2 s after it (the loop rebased only when
the next example came, after the replay resumed on the swapped version), so a third of
each version's requests had no delta; the guard rolled back 4 of 10 streams.
With the loop rebasing as soon as the pointer moves (deltas_loop.DeltaLoop.tick): first
deltas 0.5-1.2 s after their version, the stack's own deltas served 100 ms after
production 0.799 (0.763 before), 500 ms 0.742, 1 s 0.720; the stack served 0.7181 (its
served scores match "1 s after production" best): an impression's fake negative is
produced 0.76 s (p50) after the impression, its delta 0.41 s after that, so the whole
gain is lost to the ~1.2 s from impression to delta in `Rank` at the replay's pace.
The inputs matter less (replayed steps every 500 ms on that capture): as sent 0.7605,
no IPS weight 0.7626, each positive in its fake negative's step 0.7794, final labels
only 0.7752.
Impressions are scored at the end of their ``--step-ms`` block, so the stack's deltas
("topic") count up to one block after the impression: the 500 ms figures above flatter
them. With ``--step-ms 100`` on a later capture (miner fetch wait 100 ms, delta steps
every 0.5 s): the stack's deltas served at once 0.763, 200 ms later 0.738; the replayed
steps every 100 ms 0.807 (0.795 every 500 ms); an example's delta was produced 0.69 s
(p50) after it. With steps every 0.1 s (the default since): 0.24 s, and the stack served
0.742 (0.721 before) under the same load.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


# -- capture ----------------------------------------------------------------------------------
def capture(out: Path, argv: list[str]) -> int:
    """bench/learning.py with the raw topic records kept; pickled to ``out``."""
    import _learning_stack as ls
    import learning

    from loopwise.topics import Topics

    runs: list[list[tuple[str, int, int, int, bytes]]] = []  # one per stack run, in order
    roots: list[str] = []
    original_init, original_run = ls.ExampleReader.__init__, ls.ExampleReader.run

    def init(self: Any, bootstrap: str, examples: str, preferences: str, models: str, partitions: int) -> None:
        original_init(self, bootstrap, examples, preferences, models, partitions)
        records: list[tuple[str, int, int, int, bytes]] = []
        runs.append(records)
        from kafka import TopicPartition

        deltas = Topics.from_env().deltas
        parts = list(self.consumer.assignment()) + [TopicPartition(deltas, p) for p in range(partitions)]
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)
        poll = self.consumer.poll

        def keep(*a: Any, **kw: Any) -> Any:
            batch = poll(*a, **kw)
            for tp, recs in batch.items():
                records.extend((tp.topic, tp.partition, r.offset, r.timestamp, r.value) for r in recs)
            return {tp: recs for tp, recs in batch.items() if tp.topic != deltas}

        self.consumer.poll = keep

    ls.ExampleReader.__init__ = init  # type: ignore[method-assign]
    ls.ExampleReader.run = original_run  # type: ignore[method-assign]
    down = ls.stack.down

    def keep_root(root: Path) -> Any:
        roots.append(str(root))
        return down(root)

    ls.stack.down = keep_root
    rc = learning.main([*argv, "--keep"])
    for i, (records, root) in enumerate(zip(runs, roots, strict=False)):
        versions = _store_versions(Path(root))
        path = out if i == 0 else out.with_suffix(f".{i}{out.suffix}")
        with path.open("wb") as fh:
            pickle.dump({"records": records, "versions": versions, "argv": argv, "root": root}, fh)
        print(f"stack run {i}: captured {len(records)} records, {len(versions)} versions -> {path}", flush=True)
    return rc


def _store_versions(root: Path) -> dict[str, dict[str, Any]]:
    """Every version directory of the kept stack's model store: its files' bytes by name."""
    out: dict[str, dict[str, Any]] = {}
    for manifest in sorted(root.rglob("manifest.json")):
        out[manifest.parent.name] = {f.name: f.read_bytes() for f in manifest.parent.iterdir() if f.is_file()}
    return out


# -- replay -----------------------------------------------------------------------------------
Item = tuple[int, Any]  # (produce ms, Example)


def load(path: Path) -> dict[str, Any]:
    """The capture: examples by produce time, published versions (produce time, Production),
    the stack's own deltas (produce ms, Delta)."""
    from loopwise.modelstore import Manifest, sparse
    from loopwise.trainer.train import Production
    from loopwise.v1 import learning_pb2

    with path.open("rb") as fh:
        cap = pickle.load(fh)
    examples, published, deltas = [], [], []
    for topic, part, offset, ts, value in cap["records"]:
        if topic.startswith("loopwise.examples"):
            examples.append((ts, part, offset, learning_pb2.Example.FromString(value)))
        elif topic.startswith("loopwise.models"):
            ann = learning_pb2.ModelAnnouncement.FromString(value)
            if ann.action == "published":
                published.append((ts, ann.version))
        elif topic.startswith("loopwise.deltas"):
            deltas.append((ts, sparse.decode_delta(value)))
    examples.sort(key=lambda r: r[:3])
    seen: set[str] = set()
    items: list[Item] = []
    for ts, _, _, ex in examples:  # the trainer's window drops a repeated example id
        if ex.example_id not in seen:
            seen.add(ex.example_id)
            items.append((ts, ex))
    versions = []
    for ts, name in sorted(published):
        files = cap["versions"].get(name, {})
        if "manifest.json" not in files:
            continue
        man = Manifest.from_json(files["manifest.json"].decode())
        versions.append((ts, Production(name, files.get("model.onnx", b""), man, files.get("weights.pt"))))
    v1 = cap["versions"].get("v1", {})
    cold = Production("v1", v1.get("model.onnx", b""), Manifest.from_json(v1["manifest.json"].decode()), None)
    return {"items": items, "versions": versions, "cold": cold, "deltas": sorted(deltas, key=lambda d: d[0]),
            "repeated": len(examples) - len(items), "root": cap.get("root", "")}


def variant(items: list[Item], name: str) -> list[Item]:
    """The captured examples changed in one way (see the module docstring)."""
    from loopwise.v1 import learning_pb2

    if name == "stack":
        return items
    first: dict[tuple[str, str], int] = {}
    for ts, ex in items:
        first.setdefault((ex.request_id, ex.candidate_id), ts)
    out = []
    for ts, ex in items:
        key = (ex.request_id, ex.candidate_id)
        if name == "ips1" and ex.label > 0:  # no IPS weight on the positive duplicate
            ex = learning_pb2.Example.FromString(ex.SerializeToString())
            ex.weight, ex.click_weight = 1.0, 1.0
        if name == "same_step" and ex.label > 0:  # the positive at its impression, with its fake negative
            ts = first[key]
        out.append((ts, ex))
    if name == "final":  # one row per pair, its final label, at its impression, weight 1, no FNW
        best: dict[tuple[str, str], Item] = {}
        for _, ex in out:
            key = (ex.request_id, ex.candidate_id)
            if key not in best or ex.label > best[key][1].label:
                best[key] = (first[key], ex)
        out = []
        for ts, ex in best.values():
            ex = learning_pb2.Example.FromString(ex.SerializeToString())
            ex.weight, ex.click_weight, ex.feedback_mode = 1.0, 0.0, learning_pb2.FEEDBACK_MODE_WINDOW
            out.append((ts, ex))
    return sorted(out, key=lambda r: r[0])


def simulate(data: dict[str, Any], items: list[Item], step_ms: int, *, rebase: bool = True,
             requeue: bool = True, lag_ms: int = 0, topic: bool = False, keep: dict | None = None) -> dict[str, Any]:
    """The delta loop on ``items``: a step every ``step_ms`` of produce time, a new base at each
    published version's announcement; each step's deltas serve ``lag_ms`` after it (``topic``:
    the stack's own deltas instead, ``lag_ms`` after their produce time); each (request,
    candidate) scored at its first example (its impression) by the base and by what serves;
    AUC against the final labels."""
    import torch

    from loopwise.features import InputBuilder
    from loopwise.modelstore import sparse
    from loopwise.ranking_metrics import auc
    from loopwise.trainer.data import build_example_part, example_time
    from loopwise.trainer.deltas import DeltaTrainer
    from loopwise.trainer.settings import TrainerSettings

    dt = DeltaTrainer("default", "ranker", TrainerSettings())
    spec = data["cold"].manifest.spec()
    builder = InputBuilder(spec)
    dt.rebase("v1", data["cold"], spec)
    base, serve = copy_model(dt.model), copy_model(dt.model)
    pending = list(data["versions"]) if rebase else []
    queue = [(ts + lag_ms, d) for ts, d in data["deltas"]] if topic else []
    scored: dict[tuple[str, str], tuple[float, float, int]] = {}
    labels: dict[tuple[str, str], float] = {}
    step_at, per_step = None, []

    def score(batch: list[Any], now: int) -> None:
        while queue and queue[0][0] <= now:
            delta = queue.pop(0)[1]
            if delta.base_version == dt.base_version:
                with torch.no_grad():
                    for name, rows in delta.rows.items():
                        getattr(serve, name).weight[torch.from_numpy(rows.ids.astype(np.int64))] = (
                            torch.from_numpy(rows.values))
        new = [ex for ex in batch if (ex.request_id, ex.candidate_id) not in scored]
        if not new:
            return
        part = build_example_part(builder, new)
        x, d = torch.from_numpy(part.sparse), torch.from_numpy(part.dense)
        with torch.no_grad():
            s_d, s_b = (torch.sigmoid(m.logits(x, d)[0]).numpy() for m in (serve, base))
        for ex, a, b in zip(new, s_d, s_b, strict=True):
            scored[(ex.request_id, ex.candidate_id)] = (float(a), float(b), int(dt.base_version.lstrip("v")))

    batch: list[Any] = []
    for ts, ex in items:
        if step_at is None:
            step_at = ts + step_ms
        while step_at is not None and ts >= step_at:
            score(batch, step_at)
            batch = []
            if pending and pending[0][0] <= step_at:
                _, prod = pending.pop(0)
                dt.rebase(prod.version, prod, spec)
                base, serve = copy_model(dt.model), copy_model(dt.model)
                if not topic:
                    queue.clear()
                if requeue:
                    dt.requeue()
                else:
                    dt._backlog.clear()
            taken = dt.take()
            if taken and not topic:
                out = dt.step(taken)
                per_step.append(out.examples)
                queue.extend((step_at + lag_ms, sparse.decode_delta(r)) for r in out.records)
            step_at += step_ms
        batch.append(ex)
        key = (ex.request_id, ex.candidate_id)
        labels[key] = max(labels.get(key, 0.0), ex.label)
        dt.add(ex.SerializeToString(), ts, example_time(ex))
    score(batch, items[-1][0])
    keys = list(scored)
    y = np.array([labels[k] for k in keys])
    d = np.array([scored[k][0] for k in keys])
    b = np.array([scored[k][1] for k in keys])
    v = np.array([scored[k][2] for k in keys])
    if keep is not None:
        keep.update(keys=keys, y=y, serving=d, base=b, version=v)
    by_version = {int(x): (round(float(auc(y[v == x], b[v == x])), 3), round(float(auc(y[v == x], d[v == x])), 3))
                  for x in np.unique(v) if 0 < y[v == x].sum() < (v == x).sum()}
    return {"auc_deltas": round(float(auc(y, d)), 4), "auc_base": round(float(auc(y, b)), 4),
            "pairs": len(keys), "steps": len(per_step), "examples_per_step": round(float(np.mean(per_step)), 1)
            if per_step else 0, "per_version_base_vs_deltas": by_version}


def copy_model(model: Any) -> Any:
    import copy

    return copy.deepcopy(model)


def summary(data: dict[str, Any], root: str) -> None:
    """What the stack served (each pair's first example carries the score `Rank` gave it), how
    late each new base's first delta came, the deltas' own lag, the guard's rollbacks, and how
    soon a (user, item) shown before is shown again (what a delta must arrive before to help)."""
    import json

    from loopwise.ranking_metrics import auc

    items = data["items"]
    announced = {p.version: ts for ts, p in data["versions"]}
    first_delta: dict[str, int] = {}
    for ts, delta in data["deltas"]:
        first_delta.setdefault(delta.base_version, ts)
    print("new version announced -> its first delta (s):",
          {v: round((first_delta[v] - ts) / 1000, 1) for v, ts in announced.items() if v in first_delta})
    shown = np.array([ts - ex.impression_time_ms for ts, ex in items if ex.label == 0]) / 1000
    print(f"impression -> its fake negative produced: p50 {np.median(shown):.2f} s, p90 {np.percentile(shown, 90):.2f} s")
    lag = [(ts - d.first_example_ms) / 1000 for ts, d in data["deltas"] if d.first_example_ms > 0]
    if lag:
        print(f"oldest fresh example -> its delta produced: p50 {np.median(lag):.2f} s, mean {np.mean(lag):.2f} s")
    served: dict[tuple[str, str], tuple[float, int]] = {}
    label: dict[tuple[str, str], float] = {}
    last: dict[tuple[str, str], int] = {}
    gaps = []
    for ts, ex in items:
        key = (ex.request_id, ex.candidate_id)
        if key not in served:
            served[key] = (ex.served_score, int(ex.version.lstrip("v") or 0))
            pair = (ex.user_id, ex.candidate_id)
            if pair in last:
                gaps.append(ts - last[pair])
            last[pair] = ts
        label[key] = max(label.get(key, 0.0), ex.label)
    y = np.array([label[k] for k in served])
    score = np.array([v[0] for v in served.values()])
    version = np.array([v[1] for v in served.values()])
    print(f"served AUC {auc(y, score):.4f}; per version:",
          {int(v): round(float(auc(y[version == v], score[version == v])), 3) for v in np.unique(version)
           if 0 < y[version == v].sum() < (version == v).sum()})
    g = np.array(gaps)
    print(f"(user, item) pairs shown before: {len(g) / len(served):.1%}; shown again within 0.5 / 1 / 1.5 / 3 s: "
          + " / ".join(f"{(g <= ms).mean():.0%}" for ms in (500, 1000, 1500, 3000)))
    log = Path(root) / "logs" / "inference.log"
    if log.exists():
        rolled = [json.loads(line) for line in log.read_text().splitlines() if "rolled back" in line]
        print(f"guard rollbacks: {len(rolled)}",
              [(r.get("version"), r.get("sequence"), r.get("auc_base"), r.get("auc_deltas")) for r in rolled])


def replay(path: Path, step_ms: int, lags: list[int], variants: list[str]) -> None:
    data = load(path)
    summary(data, data["root"])
    items = data["items"]
    labels = np.array([ex.label for _, ex in items])
    weights = np.array([ex.weight for _, ex in items])
    print(f"{len(items)} examples ({data['repeated']} repeated ids dropped), {int(labels.sum())} positives, "
          f"positive weights mean {weights[labels > 0].mean():.2f} max {weights[labels > 0].max():.1f}; "
          f"{len(data['versions'])} versions published; {len(data['deltas'])} deltas on the topic", flush=True)
    for name, kw in [("stack", dict(topic=True, lag_ms=lag)) for lag in lags] + [
            ("stack", dict(lag_ms=lag)) for lag in lags] + [(v, {}) for v in variants]:
        t = time.perf_counter()
        r = simulate(data, variant(items, name), step_ms, **kw)
        print(name, kw, r, f"{time.perf_counter() - t:.0f}s", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if argv[:1] == ["capture"]:
        rest = argv[3:] if argv[2:3] == ["--"] else argv[2:]
        return capture(Path(argv[1]), rest)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("replay",))
    p.add_argument("path", type=Path)
    p.add_argument("--step-ms", type=int, default=500)
    p.add_argument("--lags", default="0", help="serving lags (ms) to try, comma-separated")
    p.add_argument("--variants", default="", help="input variants: ips1, same_step, final")
    args = p.parse_args(argv)
    t = time.perf_counter()
    replay(args.path, args.step_ms, [int(x) for x in args.lags.split(',') if x],
           [v for v in args.variants.split(',') if v])
    print(f"{time.perf_counter() - t:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
