import numpy as np
import pytest

from loopwise.client import build
from loopwise.features import FeatureError, FeatureSpec, InputBuilder
from loopwise.hashing import hash_ids

SPEC = FeatureSpec(sparse=("request.user_id", "candidate.id", "user.gender", "candidate.genre", "context.hour"),
                   dense=("candidate.popularity", "user.activity"), buckets=1 << 16)


def make(n=3, **cols):
    ids = [f"m{i}" for i in range(n)]
    columns = {"genre": ["Drama", "", "Comedy"][:n], "popularity": [0.1, 0.5, 0.9][:n], **cols}
    return build.candidates(ids, columns)


def test_shapes_and_values_match_single_value_hashing():
    b = InputBuilder(SPEC)
    user = build.features({"gender": "F", "activity": 0.25})
    ctx = build.features({"hour": "21"})
    sparse, dense = b.build("u7", user, ctx, make())
    assert sparse.shape == (3, 5) and sparse.dtype == np.int64
    assert dense.shape == (3, 2) and dense.dtype == np.float32
    buckets = SPEC.buckets
    assert (sparse[:, 0] == hash_ids(["u7"], field="request.user_id", buckets=buckets)[0]).all()
    assert sparse[:, 1].tolist() == hash_ids(["m0", "m1", "m2"], field="candidate.id", buckets=buckets).tolist()
    assert (sparse[:, 2] == hash_ids(["F"], field="user.gender", buckets=buckets)[0]).all()
    assert sparse[1, 3] == 0  # empty genre -> padding
    assert sparse[0, 3] == hash_ids(["Drama"], field="candidate.genre", buckets=buckets)[0]
    assert (sparse[:, 4] == hash_ids(["21"], field="context.hour", buckets=buckets)[0]).all()
    assert dense[:, 0].tolist() == pytest.approx([0.1, 0.5, 0.9])
    assert (dense[:, 1] == 0.25).all()


def test_missing_features_are_zero():
    b = InputBuilder(SPEC)
    empty = build.features({})
    sparse, dense = b.build("", empty, empty, build.candidates(["a", "b"]))
    assert (sparse[:, [0, 2, 3, 4]] == 0).all()
    assert (sparse[:, 1] > 0).all()
    assert (dense == 0).all()


def test_misaligned_column_is_rejected_with_its_name():
    cands = build.candidates(["a", "b"])
    cands.categorical.add(name="genre", values=["x"])
    with pytest.raises(FeatureError) as err:
        InputBuilder(SPEC).build("u", build.features({}), build.features({}), cands)
    assert err.value.field == "candidates.genre"


def test_non_finite_numbers_are_rejected():
    cands = build.candidates(["a"], {"popularity": [float("nan")]})
    with pytest.raises(FeatureError):
        InputBuilder(SPEC).build("u", build.features({}), build.features({}), cands)


@pytest.mark.parametrize("user,context,column,field", [
    ({"unread": float("nan")}, {}, None, "user.unread"),
    ({}, {"unread": float("inf")}, None, "context.unread"),
    ({}, {}, [1.0, float("-inf")], "candidates.unread"),
])
def test_non_finite_numbers_the_model_does_not_read_are_rejected_too(user, context, column, field):
    """They would travel on, in the impression, to the training examples."""
    cands = build.candidates(["a", "b"], {"unread": column} if column else {})
    with pytest.raises(FeatureError) as err:
        InputBuilder(SPEC).build("u", build.features(user), build.features(context), cands)
    assert err.value.field == field


def test_overlong_values_are_rejected():
    cands = build.candidates(["a"], {"genre": ["x" * 300]})
    with pytest.raises(FeatureError):
        InputBuilder(SPEC).build("u", build.features({}), build.features({}), cands)


def test_spec_round_trip_and_checks():
    assert FeatureSpec.from_dict(SPEC.to_dict()) == SPEC
    with pytest.raises(ValueError):
        FeatureSpec(sparse=("nosource",), dense=("candidate.x",))
    with pytest.raises(ValueError):
        FeatureSpec(sparse=("candidate.id",), dense=())
