"""loopwise.tools.datasets' Open Bandit Dataset loader on tiny synthetic CSVs (no network, no pip)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from loopwise.tools import datasets
from loopwise.tools.datasets import obd as obd_module

HEADER = (",timestamp,item_id,position,click,propensity_score,user_feature_0,user_feature_1,"
          "user_feature_2,user_feature_3,user-item_affinity_0,user-item_affinity_1,user-item_affinity_2")
T0 = "2019-11-24 00:00:17.004101+00:00"
T1 = "2019-11-24 00:00:19.715857+00:00"
T2 = "2019-11-24 00:01:04.303227+00:00"
ROWS = [
    # a later row first: the loader sorts by time
    f"0,{T2},0,2,0,0.5,ua,ub,uc,ud,0.0,0.0,0.0",
    # one list with positions 3 and 1 logged (same time, same user)
    f"1,{T0},2,3,1,0.25,ua,ub,uc,ud,0.0,1.5,0.0",
    f"2,{T0},1,1,0,0.125,ua,ub,uc,ud,0.0,1.5,0.0",
    # same time, another user: another list
    f"3,{T0},0,1,0,0.0625,xa,ub,uc,ud,2.0,0.0,0.0",
    # same time and user, position 2 twice: two lists
    f"4,{T1},1,2,1,1.0,ua,ub,uc,ud,0.0,0.0,0.0",
    f"5,{T1},2,2,0,0.5,ua,ub,uc,ud,0.0,0.0,0.0",
]
ITEM_CONTEXT = """,item_id,item_feature_0,item_feature_1
0,2,0.5,c2
1,0,-0.25,c0
2,1,1.0,c1
"""


def write_obd(folder: Path, policy: str = "random", campaign: str = "all", rows: list[str] | None = None,
              header: str = HEADER) -> Path:
    base = folder / policy / campaign
    base.mkdir(parents=True, exist_ok=True)
    (base / f"{campaign}.csv").write_text("\n".join([header, *(ROWS if rows is None else rows)]) + "\n")
    (base / datasets.OBD_ITEM_CONTEXT).write_text(ITEM_CONTEXT)
    return folder


@pytest.fixture
def obd(tmp_path: Path) -> datasets.OpenBandit:
    return datasets.load_open_bandit(write_obd(tmp_path / "obd"), "random", "all")


def test_rows_group_into_lists_by_time_and_user(obd: datasets.OpenBandit) -> None:
    assert obd.rows == 6 and len(obd) == 5
    assert obd.item.tolist() == [[1, -1, 2], [0, -1, -1], [-1, 1, -1], [-1, 2, -1], [-1, 0, -1]]
    assert obd.click.tolist() == [[0, 0, 1], [0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]]
    np.testing.assert_array_equal(obd.propensity[0], [0.125, np.nan, 0.25])
    assert obd.shown.sum(axis=1).tolist() == [2, 1, 1, 1, 1]
    assert obd.user[1].tolist() == ["xa", "ub", "uc", "ud"]
    assert obd.user.shape == (5, 4)


def test_timestamps_are_unix_microseconds_and_sorted(obd: datasets.OpenBandit) -> None:
    t0 = datasets.parse_obd_time(T0)
    assert t0 == 1574553617004101
    assert datasets.parse_obd_time("2019-11-24 00:00:17.004101") == t0  # naive means UTC
    assert obd.timestamp_us.dtype == np.int64
    assert obd.timestamp_us.tolist() == [t0, t0, datasets.parse_obd_time(T1),
                                         datasets.parse_obd_time(T1), datasets.parse_obd_time(T2)]


def test_flat_lists_every_logged_slot(obd: datasets.OpenBandit) -> None:
    rounds, positions, items, clicks, propensities = obd.flat()
    assert rounds.tolist() == [0, 0, 1, 2, 3, 4]
    assert positions.tolist() == [1, 3, 1, 2, 2, 2]
    assert items.tolist() == [1, 2, 0, 1, 2, 0]
    assert clicks.tolist() == [0, 1, 0, 1, 0, 0]
    assert propensities.tolist() == [0.125, 0.25, 0.0625, 1.0, 0.5, 0.5]


def test_item_context_and_affinity_align_with_item_ids(obd: datasets.OpenBandit) -> None:
    assert obd.item_ids.tolist() == [2, 0, 1]
    assert obd.item_context["item_feature_1"].tolist() == ["c2", "c0", "c1"]
    assert set(obd.item_context) == {"item_feature_0", "item_feature_1"}  # no unnamed index column
    assert obd.affinity.dtype == np.float32 and obd.affinity.shape == (5, 3)
    assert obd.affinity[0].tolist() == [0.0, 0.0, 1.5]  # item 1's affinity, in item_ids order
    assert obd.affinity[1].tolist() == [0.0, 2.0, 0.0]  # item 0's


@pytest.mark.parametrize(("row", "message"), [
    (f"9,{T0},0,4,0,0.5,ua,ub,uc,ud,0,0,0", "position outside 1..3"),
    (f"9,{T0},0,1,2,0.5,ua,ub,uc,ud,0,0,0", "click not 0 or 1"),
    (f"9,{T0},0,1,0,0.0,ua,ub,uc,ud,0,0,0", r"propensity_score outside \(0, 1\]"),
    (f"9,{T0},x,1,0,0.5,ua,ub,uc,ud,0,0,0", "invalid literal"),
    (f"9,{T0},0,1,0,0.5,ua,ub,uc", "fields, header has"),
    (f"9,{T0},7,1,0,0.5,ua,ub,uc,ud,0,0,0", "not in item_context.csv"),
])
def test_bad_rows_are_errors(tmp_path: Path, row: str, message: str) -> None:
    folder = write_obd(tmp_path, rows=[*ROWS, row])
    with pytest.raises(datasets.DatasetError, match=message):
        datasets.load_open_bandit(folder, "random", "all")


def test_a_missing_column_is_an_error(tmp_path: Path) -> None:
    folder = write_obd(tmp_path, header=HEADER.replace("propensity_score", "pscore"))
    with pytest.raises(datasets.DatasetError, match="missing column propensity_score"):
        datasets.load_open_bandit(folder, "random", "all")


def test_unknown_policy_or_campaign_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(datasets.DatasetError, match="unknown OBD policy"):
        datasets.open_bandit("greedy", "all", cache_dir=tmp_path)
    with pytest.raises(datasets.DatasetError, match="unknown OBD campaign"):
        datasets.open_bandit("bts", "kids", cache_dir=tmp_path)


def fake_obp_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in datasets.obd_files():
            policy, campaign, file = name.split("/")
            text = ITEM_CONTEXT if file == datasets.OBD_ITEM_CONTEXT else "\n".join([HEADER, *ROWS]) + "\n"
            zf.writestr(f"{datasets.OBD_WHEEL_FOLDER}/{name}", text)
        zf.writestr(f"{datasets.OBD_WHEEL_FOLDER}/.DS_Store", "not wanted")
        zf.writestr("obp/__init__.py", "")
    return path


def test_fetch_extracts_the_csvs_once_then_reuses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    calls: list[tuple[str, str]] = []

    def download(package: str, version: str, dest: Path, what: str) -> Path:
        calls.append((package, version))
        return fake_obp_wheel(dest / f"{package}-{version}-py3-none-any.whl")

    monkeypatch.setattr(obd_module, "pip_download_wheel", download)
    first = datasets.open_bandit("bts", "men", cache_dir=tmp_path)
    second = datasets.open_bandit("random", "women", cache_dir=tmp_path)
    assert calls == [("obp", datasets.OBP_VERSION)]
    assert (first.policy, first.campaign, second.policy, second.campaign) == ("bts", "men", "random", "women")
    assert first.item.tolist() == second.item.tolist()
    folder = datasets.obd_dir(tmp_path)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == sorted(
        datasets.obd_files())
    assert list(tmp_path.iterdir()) == [folder]  # the download folder is gone


def test_a_wheel_without_the_sample_is_an_error(tmp_path: Path) -> None:
    wheel = tmp_path / "obp.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("obp/__init__.py", "")
    with pytest.raises(datasets.DatasetError, match="does not hold the OBD sample"):
        datasets.extract_obd(wheel, tmp_path / "out")
