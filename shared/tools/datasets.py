"""Real data for demos and benchmarks, taken from PyPI wheels only.

MovieLens-100K (943 users, 1,682 movies, 100,000 ratings) ships inside the
``recbole`` wheel as RecBole "atomic files" (tab-separated, with typed headers
such as ``user_id:token``). `movielens_100k` fetches that wheel once with
``pip download`` (the ordinary PyPI client, so the usual index settings
apply), extracts only the three files it needs into a cache folder and reads
them from there afterwards without calling pip again. Nothing is committed to
the repository and nothing is fetched from anywhere but the package index.

`rank_inputs` turns a user and candidate items into the keyword arguments of
``Client.rank`` with the feature names of the cold-start model
(`loopwise.coldstart.DEFAULT_SPEC`).

The Open Bandit Dataset sample (ZOZOTOWN, 2019-11-24..30; three positions per
recommendation) ships inside the ``obp`` 0.4.1 wheel as
``obp/dataset/obd/{random,bts}/{all,men,women}/{campaign}.csv`` plus an
``item_context.csv`` beside each. `open_bandit` fetches that wheel the same
way (``pip download --no-deps``; obp itself is never installed: 0.5.x does not
install on Python 3.11), extracts the CSVs once and groups rows into rounds
(see `load_open_bandit` for how, and for what the sample does *not* hold).
"""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RECBOLE_VERSION = "1.2.1"
WHEEL_FOLDER = "recbole/dataset_example/ml-100k"
ML100K_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
CACHE_ENV = "LOOPWISE_DATA_CACHE"
UNKNOWN = "unknown"
# MovieLens' own age groups (as in ML-1M): lower bound -> label.
AGE_GROUPS = ((0, "under 18"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-49"), (50, "50-55"),
              (56, "56+"))


class DatasetError(RuntimeError):
    """A data set that could not be fetched or parsed."""


@dataclass(frozen=True)
class User:
    id: str
    age_group: str
    gender: str
    occupation: str
    activity: float = 0.0  # log1p(ratings) / max over users, 0..1


@dataclass(frozen=True)
class Item:
    id: str
    title: str
    genre: str
    decade: str
    popularity: float = 0.0  # log1p(ratings) / max over items, 0..1


@dataclass(frozen=True)
class MovieLens:
    """Ratings sorted by timestamp (stable), and the users and items they refer to.

    ``user``/``item`` are string ids, ``rating`` float32, ``timestamp`` int64
    (Unix seconds); ``item_ids`` and ``item_counts`` (ratings per item) align.
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    users: dict[str, User]
    items: dict[str, Item]
    item_ids: list[str] = field(default_factory=list)
    item_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.rating)

    def rated_by(self) -> dict[str, set[str]]:
        """Every user's rated items (over the whole data set)."""
        out: dict[str, set[str]] = {}
        for user, item in zip(self.user.tolist(), self.item.tolist(), strict=True):
            out.setdefault(user, set()).add(item)
        return out


# -- fetching ------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$LOOPWISE_DATA_CACHE``, else ``~/.cache/loopwise/data``."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path.home() / ".cache" / "loopwise" / "data"


def ml100k_dir(cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"ml-100k-recbole-{RECBOLE_VERSION}"


def ensure_movielens_100k(cache_dir: Path | None = None) -> Path:
    """The folder holding the three ml-100k files, fetched and extracted on first use."""
    folder = ml100k_dir(cache_dir)
    if all((folder / name).is_file() for name in ML100K_FILES):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".download-") as tmp:
        wheel = download_wheel(Path(tmp))
        extract_ml100k(wheel, folder)
    return folder


def download_wheel(dest: Path, version: str = RECBOLE_VERSION) -> Path:
    """``pip download --no-deps recbole==version`` into ``dest``; the wheel's path."""
    return pip_download_wheel("recbole", version, dest, "MovieLens-100K")


def pip_download_wheel(package: str, version: str, dest: Path, what: str) -> Path:
    """``pip download --no-deps package==version`` into ``dest``; the wheel's path.

    ``what`` names the data set the wheel is fetched for (in logs and errors).
    """
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--disable-pip-version-check", f"{package}=={version}", "-d", str(dest)]
    log.info(f"fetching {what} from PyPI", extra={"package": f"{package}=={version}"})
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatasetError(f"could not run pip to fetch {package}=={version}: {exc}") from exc
    wheels = sorted(dest.glob(f"{package}-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise DatasetError(f"pip download {package}=={version} failed (exit {done.returncode}); "
                           f"{what} comes from that wheel on PyPI:\n{tail}")
    return wheels[0]


def extract_ml100k(wheel: Path, folder: Path) -> None:
    """Copy only the three ml-100k files out of the wheel (each written atomically)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            for name in ML100K_FILES:
                data = zf.read(f"{WHEEL_FOLDER}/{name}")
                part = folder / f".{name}.part"
                part.write_bytes(data)
                part.replace(folder / name)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{wheel.name} does not hold {WHEEL_FOLDER}/{{{','.join(ML100K_FILES)}}}: {exc}"
                           ) from exc


# -- parsing -------------------------------------------------------------------------------


def read_atomic(path: Path) -> dict[str, list[str]]:
    """A RecBole atomic file as columns keyed by field name (the ``:type`` suffix dropped)."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines:
        raise DatasetError(f"{path}: empty file")
    names = [h.split(":", 1)[0].strip() for h in lines[0].split("\t")]
    columns: dict[str, list[str]] = {n: [] for n in names}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        values = line.split("\t")
        if len(values) > len(names):
            raise DatasetError(f"{path}:{number}: {len(values)} fields, header has {len(names)}")
        values += [""] * (len(names) - len(values))
        for name, value in zip(names, values, strict=True):
            columns[name].append(value.strip())
    return columns


def _require(columns: dict[str, list[str]], path: Path, *names: str) -> None:
    missing = [n for n in names if n not in columns]
    if missing:
        raise DatasetError(f"{path}: missing field(s) {', '.join(missing)}")


def age_group(age: str | int) -> str:
    """MovieLens age bucket of an age in years ("25-34"); "unknown" if not a number."""
    try:
        years = int(age)
    except (TypeError, ValueError):
        return UNKNOWN
    label = UNKNOWN
    for lower, name in AGE_GROUPS:
        if years >= lower:
            label = name
    return label


def decade(year: str | int) -> str:
    """"1990s" for 1995; "unknown" if not a year."""
    try:
        value = int(float(year))
    except (TypeError, ValueError):
        return UNKNOWN
    return f"{value // 10 * 10}s" if value > 0 else UNKNOWN


def first_genre(classes: str) -> str:
    tokens = classes.split()
    return tokens[0] if tokens else UNKNOWN


def log_scale(counts: np.ndarray) -> np.ndarray:
    """log1p(count) / max, in 0..1 (all zeros if every count is zero)."""
    scaled = np.log1p(counts.astype(np.float64))
    top = scaled.max(initial=0.0)
    return (scaled / top if top > 0 else scaled).astype(np.float32)


def _ratings(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    cols = read_atomic(path)
    _require(cols, path, "user_id", "item_id", "rating", "timestamp")
    try:
        rating = np.asarray(cols["rating"], dtype=np.float32)
        stamp = np.asarray([int(float(t)) for t in cols["timestamp"]], dtype=np.int64)
    except ValueError as exc:
        raise DatasetError(f"{path}: {exc}") from exc
    order = np.argsort(stamp, kind="stable")
    user = np.asarray(cols["user_id"], dtype=np.str_)[order]
    item = np.asarray(cols["item_id"], dtype=np.str_)[order]
    return user, item, rating[order], stamp[order]


def _counts(ids: list[str], rated: np.ndarray) -> np.ndarray:
    known, counts = np.unique(rated, return_counts=True)
    lookup = dict(zip(known.tolist(), counts.tolist(), strict=True))
    return np.asarray([lookup.get(i, 0) for i in ids], dtype=np.int64)


def _users(path: Path, rated: np.ndarray) -> dict[str, User]:
    cols = read_atomic(path)
    _require(cols, path, "user_id", "age", "gender", "occupation")
    ids = cols["user_id"]
    activity = log_scale(_counts(ids, rated))
    return {uid: User(uid, age_group(age), gender or UNKNOWN, occupation or UNKNOWN, float(act))
            for uid, age, gender, occupation, act in zip(ids, cols["age"], cols["gender"],
                                                          cols["occupation"], activity, strict=True)}


def _items(path: Path, rated: np.ndarray) -> tuple[dict[str, Item], np.ndarray]:
    cols = read_atomic(path)
    _require(cols, path, "item_id", "movie_title", "release_year", "class")
    ids = cols["item_id"]
    counts = _counts(ids, rated)
    popularity = log_scale(counts)
    items = {iid: Item(iid, title, first_genre(classes), decade(year), float(pop))
             for iid, title, year, classes, pop in zip(ids, cols["movie_title"], cols["release_year"],
                                                        cols["class"], popularity, strict=True)}
    return items, counts


def load_movielens(folder: Path) -> MovieLens:
    """Parse ``ml-100k.{inter,user,item}`` from ``folder``."""
    for name in ML100K_FILES:
        if not (folder / name).is_file():
            raise DatasetError(f"{folder / name} is missing")
    user, item, rating, stamp = _ratings(folder / "ml-100k.inter")
    users = _users(folder / "ml-100k.user", user)
    items, counts = _items(folder / "ml-100k.item", item)
    unknown = set(np.unique(item).tolist()) - items.keys()
    if unknown:
        raise DatasetError(f"ratings refer to {len(unknown)} item(s) not in ml-100k.item")
    return MovieLens(user=user, item=item, rating=rating, timestamp=stamp, users=users, items=items,
                     item_ids=list(items), item_counts=counts)


def movielens_100k(cache_dir: Path | None = None) -> MovieLens:
    """MovieLens-100K from the pinned ``recbole`` wheel (fetched on first use, then cached)."""
    return load_movielens(ensure_movielens_100k(cache_dir))


# -- Rank inputs ---------------------------------------------------------------------------


def rank_inputs(user: User, items: Sequence[Item], *, timestamp: float | None = None) -> dict[str, Any]:
    """Keyword arguments for ``client.rank([i.id for i in items], **inputs)``.

    Names match the cold-start spec: ``user.{gender,age_group,occupation}``
    and ``candidate.{genre,decade}`` (categorical), ``user.activity`` and
    ``candidate.popularity`` (numeric), and ``context.hour`` (UTC hour of
    ``timestamp``, Unix seconds; now if None) as a categorical string.
    """
    at = datetime.now(UTC) if timestamp is None else datetime.fromtimestamp(timestamp, UTC)
    return {
        "user_id": user.id,
        "user": {"gender": user.gender, "age_group": user.age_group, "occupation": user.occupation,
                 "activity": float(user.activity)},
        "context": {"hour": str(at.hour)},
        "features": {"genre": [i.genre for i in items], "decade": [i.decade for i in items],
                     "popularity": [float(i.popularity) for i in items]},
    }


# -- Open Bandit Dataset -------------------------------------------------------------------

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
