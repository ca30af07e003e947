"""FNW importance weights (Ktena et al., RecSys 2019) against hand-computed cases, and the
trainer's handling of the miner's fake-negative examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from loopwise.features import FeatureSpec, InputBuilder  # noqa: E402
from loopwise.trainer.data import build_example_part, build_window_data, example_time, final_labels  # noqa: E402
from loopwise.trainer.model import fnw_weights, ips_loss, sampled_ips_loss  # noqa: E402
from loopwise.trainer.train import settle  # noqa: E402
from loopwise.v1 import features_pb2, learning_pb2  # noqa: E402

FAKE = learning_pb2.FEEDBACK_MODE_FAKE_NEGATIVE
LN3 = math.log(3.0)  # logit of p = 0.75


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


# -- the weights against the paper's derivation --------------------------------------------------


@pytest.mark.parametrize("f", [0.01, 0.2, 0.5, 0.75, 0.99])
def test_weights_are_p_over_b_of_the_fake_negative_stream(f: float) -> None:
    """One negative per impression plus a positive per click: b(y=1|x) = p/(1+p); the
    importance weights p(y|x)/b(y|x) are 1 + p and (1 - p)(1 + p)."""
    b1 = f / (1 + f)
    logit = torch.tensor([math.log(f / (1 - f))] * 2)
    w = fnw_weights(logit, t(1.0, 0.0), torch.tensor([True, True]))
    assert w is not None
    assert float(w[0]) == pytest.approx(f / b1, rel=1e-5) == pytest.approx(1 + f, rel=1e-5)
    assert float(w[1]) == pytest.approx((1 - f) / (1 - b1), rel=1e-5) == pytest.approx((1 - f) * (1 + f), rel=1e-5)


def test_hand_computed_losses() -> None:
    # p = f = 0.75: positive (1 + 0.75) * -ln 0.75, negative (0.25 * 1.75) * -ln 0.25
    pos = ips_loss(t(LN3), t(1.0), t(1.0), torch.tensor([True]))
    neg = ips_loss(t(LN3), t(0.0), t(1.0), torch.tensor([True]))
    assert float(pos) == pytest.approx(1.75 * 0.2876821, rel=1e-5)  # 0.503444
    assert float(neg) == pytest.approx(0.4375 * 1.3862944, rel=1e-5)  # 0.606504
    # p = f = 0.5: 1.5 ln 2 and 0.75 ln 2; a window-mode row of the batch keeps weight 1
    batch = ips_loss(t(0.0, 0.0, 0.0), t(1.0, 0.0, 0.0), t(1.0, 1.0, 1.0), torch.tensor([True, True, False]))
    assert float(batch) == pytest.approx((1.5 + 0.75 + 1.0) * math.log(2) / 3, rel=1e-5)


def test_no_gradient_through_the_weight() -> None:
    """d/dz of -(1+f) log p with f fixed is -(1+f)(1-p); of -(1-f)(1+f) log(1-p) it is (1-f)(1+f) p."""
    z = torch.tensor([LN3, LN3], requires_grad=True)
    (ips_loss(z, t(1.0, 0.0), t(1.0, 1.0), torch.tensor([True, True])) * 2).backward()
    assert z.grad is not None
    assert z.grad.tolist() == pytest.approx([-1.75 * 0.25, 0.4375 * 0.75], rel=1e-5)  # -0.4375, 0.328125


def test_ips_weight_on_the_positive_duplicate() -> None:
    """The positive duplicate's Rel-MF loss w*l_pos + (1-w)*l_neg, times 1 + f."""
    got = ips_loss(t(LN3), t(1.0), t(4.0), torch.tensor([True]))
    l_pos, l_neg = -math.log(0.75), -math.log(0.25)
    assert float(got) == pytest.approx(1.75 * (4 * l_pos - 3 * l_neg), rel=1e-5)  # -5.26427
    # sampled_ips_loss: with weight 1 the same as ips_loss, fnw weights included
    z, y, ones, m = t(LN3, 0.3), t(1.0, 0.0), t(1.0, 1.0), torch.tensor([True, True])
    assert float(sampled_ips_loss(z, y, ones, m)) == pytest.approx(float(ips_loss(z, y, ones, m)), rel=1e-6)


def test_click_scale_turns_the_models_probability_into_a_click_probability() -> None:
    """Model probability 0.75, click weight 2 (scale 0.5): f = 0.375, weights 1.375 and
    0.625 * 1.375."""
    w = fnw_weights(t(LN3, LN3, LN3), t(1.0, 0.0, 0.0), t(0.5, 0.5, 0.0))
    assert w is not None and w.tolist() == pytest.approx([1.375, 0.859375, 1.0], rel=1e-5)


@pytest.mark.parametrize("scaled", [True, False])
def test_with_ips_weights_fnw_recovers_the_relevance_only_with_the_click_scale(scaled: bool) -> None:
    """Relevance 0.4, examination 0.25 (click probability 0.1, IPS weight 4): a fake negative
    and, with probability 0.1, a positive duplicate of weight 4. With the click scale 1/4 the
    fixed point is the relevance (the window mode's Rel-MF target); with the model's own
    probability as f the negatives are under-weighed and it overshoots."""
    q, w = 0.1, 4.0
    scale = t(1 / w if scaled else 1.0)
    z = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([z], lr=4.0)
    for _ in range(200):
        opt.zero_grad()
        (ips_loss(z, t(0.0), t(1.0), scale) + q * ips_loss(z, t(1.0), t(w), scale)).backward()
        opt.step()
    p = float(torch.sigmoid(z.detach()[0]))
    if scaled:
        assert p == pytest.approx(0.4, abs=2e-3)
    else:
        assert p > 0.45


def test_window_rows_keep_todays_loss() -> None:
    z, y, w = t(0.3, -1.0, 2.0), t(1.0, 0.0, 1.0), t(2.0, 1.0, 1.0)
    plain = ips_loss(z, y, w)
    assert float(ips_loss(z, y, w, torch.tensor([False, False, False]))) == float(plain)
    assert float(ips_loss(z, y, w, None)) == float(plain)
    assert fnw_weights(z, y, torch.tensor([False, False, False])) is None


@pytest.mark.parametrize("q", [0.05, 0.3, 0.6])
def test_fnw_recovers_the_click_rate_the_naive_loss_does_not(q: float) -> None:
    """An impression with click probability q gives a fake negative (weight 1) and a positive
    duplicate (weight q in expectation). FNW's fixed point is p = q; the unweighted loss's is
    the biased q / (1 + q)."""
    def fit(fnw: bool) -> float:
        z = torch.zeros(1, requires_grad=True)
        mask = torch.tensor([fnw])
        opt = torch.optim.SGD([z], lr=4.0)
        for _ in range(400):
            opt.zero_grad()
            loss = ips_loss(z, t(0.0), t(1.0), mask) + q * ips_loss(z, t(1.0), t(1.0), mask)
            loss.backward()
            opt.step()
        return float(torch.sigmoid(z.detach()[0]))

    assert fit(True) == pytest.approx(q, abs=2e-3)
    assert fit(False) == pytest.approx(q / (1 + q), abs=2e-3)


# -- the trainer's data --------------------------------------------------------------------------

SPEC = FeatureSpec(sparse=("request.user_id", "candidate.id"), dense=("context.x",), buckets=1 << 12)


def example(request: str, cid: str, label: float, at: int, fake: bool = True, label_at: int | None = None,
            correction: bool = False) -> learning_pb2.Example:
    return learning_pb2.Example(
        example_id=f"{request}/{cid}/{label}/{fake}", tenant="t", user_id="u", request_id=request,
        candidate_id=cid, label=label, weight=2.0 if label else 1.0, impression_time_ms=at,
        label_time_ms=label_at if label_at is not None else at, correction=correction,
        feedback_mode=FAKE if fake else learning_pb2.FEEDBACK_MODE_WINDOW, candidate=features_pb2.Features())


def test_example_time_of_a_positive_duplicate_is_its_click() -> None:
    assert example_time(example("r", "a", 1.0, 1000, label_at=5000)) == 5000
    assert example_time(example("r", "a", 0.0, 1000)) == 1000
    assert example_time(example("r", "a", 1.0, 1000, fake=False, label_at=5000)) == 1000


def test_both_rows_kept_flagged_settle_does_not_hold_them_and_the_gate_sees_final_labels() -> None:
    exs = [example("r1", "a", 0.0, 1000), example("r1", "b", 0.0, 1000),
           example("r1", "a", 1.0, 1000, label_at=1500),
           example("r0", "c", 0.0, 900, fake=False), example("r0", "c", 1.0, 900, fake=False, label_at=999_999,
                                                             correction=True)]
    data = build_window_data(InputBuilder(SPEC), exs)
    assert data.fnw is not None and data.fnw.tolist() == [1.0, 1.0, 1.0, 0.0]  # r0/c: corrected
    assert data.label.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert data.time_ms.tolist() == [1000, 1000, 1500, 900]
    # window 10 s: the window-mode row waits out the window, the fake-negative ones do not
    kept = settle(data, 10_000)
    assert kept.fnw is not None and kept.fnw_rows().tolist() == [True, True, True]
    # the gate: r1/a's fake negative is contradicted by its positive duplicate
    final = final_labels(data, data)
    assert final.label.tolist() == [0.0, 1.0, 1.0] and len(final) == 3


def test_build_part_flags_only_fake_negative_mode() -> None:
    scaled = example("r", "c", 0.0, 1)
    scaled.click_weight = 4.0
    part = build_example_part(InputBuilder(SPEC), [example("r", "a", 0.0, 1), example("r", "b", 0.0, 1, fake=False),
                                                   scaled])
    assert part.fnw.tolist() == [1.0, 0.0, 0.25]  # the click scale: 1 / click_weight
    assert np.all(part.weight == 1.0)
