"""The Open Bandit Dataset sample from the ``obp`` wheel.

The sample (ZOZOTOWN, 2019-11-24..30; three positions per recommendation)
ships inside the ``obp`` 0.4.1 wheel as
``obp/dataset/obd/{random,bts}/{all,men,women}/{campaign}.csv`` plus an
``item_context.csv`` beside each. `open_bandit` fetches that wheel like
MovieLens (``pip download --no-deps``; obp itself is never installed: 0.5.x
does not install on Python 3.11), extracts the CSVs once and groups rows into
rounds (see `load_open_bandit` for how, and for what the sample does *not*
hold).
"""

from __future__ import annotations

import csv
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from loopwise.tools.datasets.fetch import DatasetError, default_cache_dir, pip_download_wheel

OBP_VERSION = "0.4.1"
OBD_WHEEL_FOLDER = "obp/dataset/obd"
OBD_POLICIES = ("random", "bts")
OBD_CAMPAIGNS = ("all", "men", "women")
OBD_POSITIONS = 3
OBD_USER_FEATURES = tuple(f"user_feature_{j}" for j in range(4))
OBD_AFFINITY_PREFIX = "user-item_affinity_"
OBD_ITEM_CONTEXT = "item_context.csv"
_OBD_COLUMNS = ("timestamp", "item_id", "position", "click", "propensity_score", *OBD_USER_FEATURES)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class OpenBandit:
    """One OBD sample file grouped into rounds (recommendation lists of 3 positions).

    Per round ``r`` and 0-based position ``k`` (position ``k + 1``):
    ``item[r, k]`` (int64 item id, -1 where the sample does not hold that
    slot), ``click[r, k]`` (int8, 0 where absent), ``propensity[r, k]``
    (the logging policy's propensity, NaN where absent); per round
    ``timestamp_us`` (int64 Unix microseconds, nondecreasing), ``user`` (the
    four hashed user features, str) and ``affinity`` (float32, one column per
    item of ``item_ids``: the round's user-item affinities). ``item_ids``
    and the ``item_context`` columns (by name, ``item_id`` excluded) align.
    """

    policy: str
    campaign: str
    timestamp_us: np.ndarray
    item: np.ndarray
    click: np.ndarray
    propensity: np.ndarray
    user: np.ndarray
    affinity: np.ndarray
    item_ids: np.ndarray
    item_context: dict[str, np.ndarray]
    rows: int

    def __len__(self) -> int:
        return len(self.timestamp_us)

    @property
    def shown(self) -> np.ndarray:
        """(rounds, 3) bool: which slots the sample holds."""
        return self.item >= 0

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every logged slot: (round index, 1-based position, item id, click, propensity)."""
        rounds, slots = np.nonzero(self.shown)
        return (rounds, slots + 1, self.item[rounds, slots], self.click[rounds, slots],
                self.propensity[rounds, slots])


def obd_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"obd-obp-{OBP_VERSION}"


def obd_files() -> list[str]:
    """Paths of every OBD sample file inside the wheel, relative to `OBD_WHEEL_FOLDER`."""
    return [f"{policy}/{campaign}/{name}" for policy in OBD_POLICIES for campaign in OBD_CAMPAIGNS
            for name in (f"{campaign}.csv", OBD_ITEM_CONTEXT)]


def ensure_open_bandit(cache_dir: Path | None = None) -> Path:
    """The folder holding ``{policy}/{campaign}/*.csv``, fetched and extracted on first use."""
    folder = obd_dir(cache_dir)
    if all((folder / name).is_file() for name in obd_files()):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".download-") as tmp:
        wheel = pip_download_wheel("obp", OBP_VERSION, Path(tmp), "the Open Bandit Dataset sample")
        extract_obd(wheel, folder)
    return folder


def extract_obd(wheel: Path, folder: Path) -> None:
    """Copy the sample CSVs out of the obp wheel (each written atomically)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name in obd_files():
                target = folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                part = target.with_name(f".{target.name}.part")
                part.write_bytes(zf.read(f"{OBD_WHEEL_FOLDER}/{name}"))
                part.replace(target)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{wheel.name} does not hold the OBD sample under {OBD_WHEEL_FOLDER}: {exc}"
                           ) from exc


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a comma-separated file (pandas' unnamed index column included)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            lines = list(csv.reader(handle))
    except OSError as exc:
        raise DatasetError(f"{path}: {exc}") from exc
    if not lines:
        raise DatasetError(f"{path}: empty file")
    header, rows = lines[0], [row for row in lines[1:] if row]
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DatasetError(f"{path}:{number}: {len(row)} fields, header has {len(header)}")
    return header, rows


def _column(header: list[str], rows: list[list[str]], name: str, path: Path) -> list[str]:
    if name not in header:
        raise DatasetError(f"{path}: missing column {name}")
    j = header.index(name)
    return [row[j] for row in rows]


def parse_obd_time(stamp: str) -> int:
    """``2019-11-24 00:00:17.004101+00:00`` -> Unix microseconds (UTC if no offset)."""
    at = datetime.fromisoformat(stamp.strip())
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class _ObdRows:
    """The rows of one sample file, sorted by time (stable), as arrays."""

    stamp: np.ndarray
    item: np.ndarray
    position: np.ndarray
    click: np.ndarray
    propensity: np.ndarray
    user: np.ndarray
    affinity: np.ndarray
    affinity_items: np.ndarray


def _obd_rows(path: Path) -> _ObdRows:
    header, rows = _read_csv(path)
    cols = {name: _column(header, rows, name, path) for name in _OBD_COLUMNS}
    affinity_names = [h for h in header if h.startswith(OBD_AFFINITY_PREFIX)]
    try:
        stamp = np.asarray([parse_obd_time(t) for t in cols["timestamp"]], dtype=np.int64)
        item = np.asarray(cols["item_id"], dtype=np.int64)
        position = np.asarray(cols["position"], dtype=np.int64)
        click = np.asarray(cols["click"], dtype=np.int8)
        propensity = np.asarray(cols["propensity_score"], dtype=np.float64)
        affinity_items = np.asarray([int(h[len(OBD_AFFINITY_PREFIX):]) for h in affinity_names], dtype=np.int64)
        index = [header.index(h) for h in affinity_names]
        affinity = np.asarray([[float(row[j]) for j in index] for row in rows],
                              dtype=np.float32).reshape(len(rows), len(index))
    except ValueError as exc:
        raise DatasetError(f"{path}: {exc}") from exc
    _check_obd(path, position, click, propensity, item)
    user = np.asarray([cols[name] for name in OBD_USER_FEATURES], dtype=np.str_).T.reshape(len(rows), 4)
    order = np.argsort(stamp, kind="stable")
    return _ObdRows(stamp[order], item[order], position[order], click[order], propensity[order], user[order],
                    affinity[order], affinity_items)


def _check_obd(path: Path, position: np.ndarray, click: np.ndarray, propensity: np.ndarray,
               item: np.ndarray) -> None:
    problems = {
        f"position outside 1..{OBD_POSITIONS}": (position < 1) | (position > OBD_POSITIONS),
        "click not 0 or 1": (click != 0) & (click != 1),
        "propensity_score outside (0, 1]": ~((propensity > 0) & (propensity <= 1)),
        "negative item_id": item < 0,
    }
    for what, bad in problems.items():
        if bad.any():
            raise DatasetError(f"{path}: {what} in {int(bad.sum())} row(s), first data row "
                               f"{int(np.argmax(bad)) + 1}")


def round_starts(stamp: np.ndarray, user: np.ndarray, position: np.ndarray) -> np.ndarray:
    """0-based round index of each (time-sorted) row.

    A round is a run of consecutive rows with the same timestamp and the
    same user features; a position already filled in the current run starts
    a new round (one list never shows two items at one position).
    """
    rounds = np.zeros(len(stamp), dtype=np.int64)
    current = -1
    filled: set[int] = set()
    for i in range(len(stamp)):
        same = (i > 0 and stamp[i] == stamp[i - 1] and bool((user[i] == user[i - 1]).all())
                and int(position[i]) not in filled)
        if not same:
            current, filled = current + 1, set()
        filled.add(int(position[i]))
        rounds[i] = current
    return rounds


def _item_context(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    header, rows = _read_csv(path)
    try:
        ids = np.asarray(_column(header, rows, "item_id", path), dtype=np.int64)
    except ValueError as exc:
        raise DatasetError(f"{path}: {exc}") from exc
    names = [h for h in header if h and h != "item_id"]
    context = {name: np.asarray(_column(header, rows, name, path), dtype=np.str_) for name in names}
    return ids, context


def load_open_bandit(folder: Path, policy: str, campaign: str) -> OpenBandit:
    """Parse ``{folder}/{policy}/{campaign}/{campaign}.csv`` and its ``item_context.csv``.

    Rows are sorted by timestamp and grouped into rounds by `round_starts`:
    in the full data set a list's three rows share their timestamp and user
    features. The 10,000-row sample in the wheel is a subsample of *rows*,
    though, so almost every round holds a single slot (the two or three
    siblings were not sampled): expect ``shown.sum(1)`` to be 1 for ~99.9%
    of rounds. Nothing is invented for the missing slots.
    """
    _check_choice(policy, campaign)
    base = folder / policy / campaign
    rows = _obd_rows(base / f"{campaign}.csv")
    item_ids, context = _item_context(base / OBD_ITEM_CONTEXT)
    unknown = set(np.unique(rows.item).tolist()) - set(item_ids.tolist())
    if unknown:
        raise DatasetError(f"{base}: rows refer to {len(unknown)} item(s) not in {OBD_ITEM_CONTEXT}")
    rounds = round_starts(rows.stamp, rows.user, rows.position)
    n = int(rounds[-1]) + 1 if len(rounds) else 0
    first = np.unique(rounds, return_index=True)[1]
    slot = rows.position - 1
    item = np.full((n, OBD_POSITIONS), -1, dtype=np.int64)
    click = np.zeros((n, OBD_POSITIONS), dtype=np.int8)
    propensity = np.full((n, OBD_POSITIONS), np.nan)
    item[rounds, slot] = rows.item
    click[rounds, slot] = rows.click
    propensity[rounds, slot] = rows.propensity
    return OpenBandit(policy=policy, campaign=campaign, timestamp_us=rows.stamp[first], item=item, click=click,
                      propensity=propensity, user=rows.user[first],
                      affinity=_align_affinity(rows.affinity[first], rows.affinity_items, item_ids),
                      item_ids=item_ids, item_context=context, rows=len(rows.stamp))


def _align_affinity(affinity: np.ndarray, columns: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """Affinity columns reordered to ``item_ids`` (0 for an item without a column)."""
    out = np.zeros((affinity.shape[0], len(item_ids)), dtype=np.float32)
    where = {int(i): j for j, i in enumerate(columns.tolist())}
    for k, item in enumerate(item_ids.tolist()):
        if item in where:
            out[:, k] = affinity[:, where[item]]
    return out


def _check_choice(policy: str, campaign: str) -> None:
    if policy not in OBD_POLICIES:
        raise DatasetError(f"unknown OBD policy {policy!r}; one of {', '.join(OBD_POLICIES)}")
    if campaign not in OBD_CAMPAIGNS:
        raise DatasetError(f"unknown OBD campaign {campaign!r}; one of {', '.join(OBD_CAMPAIGNS)}")


def open_bandit(policy: str = "random", campaign: str = "all", cache_dir: Path | None = None) -> OpenBandit:
    """The OBD sample of ``policy`` ("random"|"bts") and ``campaign`` ("all"|"men"|"women"),
    from the pinned ``obp`` wheel (fetched on first use, then cached)."""
    _check_choice(policy, campaign)
    return load_open_bandit(ensure_open_bandit(cache_dir), policy, campaign)
