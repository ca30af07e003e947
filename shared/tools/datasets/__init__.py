"""Real data for demos and benchmarks, taken from PyPI wheels only.

- `movielens`: MovieLens-100K (943 users, 1,682 movies, 100,000 ratings) from
  the ``recbole`` wheel, and `rank_inputs` (a user and items as ``Client.rank``
  arguments with the cold-start model's feature names);
- `obd`: the Open Bandit Dataset sample (ZOZOTOWN; three positions per
  recommendation) from the ``obp`` wheel;
- `fetch`: the cache folder (``$LOOPWISE_DATA_CACHE``) and ``pip download``.

Each wheel is fetched once with the ordinary PyPI client (the usual index
settings apply); only the files needed are extracted into the cache and read
from there afterwards. Nothing is committed to the repository and nothing is
fetched from anywhere but the package index. Every public name of the three
modules is importable from here.
"""

from loopwise.tools.datasets.fetch import (
    CACHE_ENV,
    DatasetError,
    default_cache_dir,
    pip_download_wheel,
)
from loopwise.tools.datasets.movielens import (
    AGE_GROUPS,
    ML100K_FILES,
    RECBOLE_VERSION,
    UNKNOWN,
    WHEEL_FOLDER,
    Item,
    MovieLens,
    User,
    age_group,
    decade,
    download_wheel,
    ensure_movielens_100k,
    extract_ml100k,
    first_genre,
    load_movielens,
    log_scale,
    ml100k_dir,
    movielens_100k,
    rank_inputs,
    read_atomic,
)
from loopwise.tools.datasets.obd import (
    OBD_AFFINITY_PREFIX,
    OBD_CAMPAIGNS,
    OBD_ITEM_CONTEXT,
    OBD_POLICIES,
    OBD_POSITIONS,
    OBD_USER_FEATURES,
    OBD_WHEEL_FOLDER,
    OBP_VERSION,
    OpenBandit,
    ensure_open_bandit,
    extract_obd,
    load_open_bandit,
    obd_dir,
    obd_files,
    open_bandit,
    parse_obd_time,
    round_starts,
)

__all__ = [
    "AGE_GROUPS", "CACHE_ENV", "ML100K_FILES", "OBD_AFFINITY_PREFIX", "OBD_CAMPAIGNS", "OBD_ITEM_CONTEXT",
    "OBD_POLICIES", "OBD_POSITIONS", "OBD_USER_FEATURES", "OBD_WHEEL_FOLDER", "OBP_VERSION", "RECBOLE_VERSION",
    "UNKNOWN", "WHEEL_FOLDER", "DatasetError", "Item", "MovieLens", "OpenBandit", "User", "age_group", "decade",
    "default_cache_dir", "download_wheel", "ensure_movielens_100k", "ensure_open_bandit", "extract_ml100k",
    "extract_obd", "first_genre", "load_movielens", "load_open_bandit", "log_scale", "ml100k_dir",
    "movielens_100k", "obd_dir", "obd_files", "open_bandit", "parse_obd_time", "pip_download_wheel",
    "rank_inputs", "read_atomic", "round_starts",
]
