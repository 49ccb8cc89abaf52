"""Property tests (hypothesis) for the merge function and TIES on random small tensors."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from adamerging.merging.task_vectors import merge
from adamerging.merging.ties import elect_and_select, trim_top_k

floats = st.floats(-4, 4, allow_nan=False, width=32)
small = st.integers(1, 5)


def matrices(rows=None, cols=None):
    rows = st.integers(1, 4) if rows is None else rows
    cols = st.integers(1, 30) if cols is None else cols
    return (
        st.tuples(rows, cols)
        .flatmap(lambda s: arrays("float32", s, elements=floats))
        .map(torch.from_numpy)
    )


@settings(max_examples=60, deadline=None)
@given(matrices())
def test_trim_at_k_100_percent_is_identity(x):
    assert torch.equal(trim_top_k(x, 1.0), x)


@settings(max_examples=60, deadline=None)
@given(matrices(), st.sampled_from([0.05, 0.2, 0.5, 0.8]))
def test_trim_keeps_the_largest_and_is_idempotent(x, k):
    t = trim_top_k(x, k)
    assert torch.equal(trim_top_k(t, k), t)
    kept = t != 0
    for row, krow in zip(x, kept):
        # everything kept is at least as large as everything dropped
        if krow.any() and (~krow).any():
            assert row[krow].abs().min() >= row[~krow].abs().max()
        assert krow.sum() >= min(int(row.numel() * k), int((row != 0).sum()))


@settings(max_examples=60, deadline=None)
@given(matrices())
def test_sign_election_invariants(x):
    sign, selected = elect_and_select(x)
    assert set(sign.unique().tolist()) <= {-1.0, 0.0, 1.0}
    column_sum = x.sum(dim=0)
    decided = column_sum != 0
    assert torch.equal(sign[decided], torch.sign(column_sum[decided]))
    nz = selected != 0
    # survivors agree with the election
    assert torch.equal(torch.sign(selected)[nz], sign.expand_as(selected)[nz])
    assert torch.equal(selected[nz], x[nz])  # and are unchanged
    agree = torch.sign(x) == sign
    # every agreeing entry survives
    assert torch.equal(nz, agree & (x != 0))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.floats(-2, 2), st.integers(0, 10_000))
def test_merge_is_affine_in_the_lambdas(tasks, rows, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    theta0 = {f"k{j}": torch.randn(3, generator=g) for j in range(rows)}
    tau = {k: torch.randn(tasks, 3, generator=g) for k in theta0}
    c1, c2 = torch.randn(rows, tasks, generator=g), torch.randn(rows, tasks, generator=g)
    combined = merge(theta0, tau, alpha * c1 + (1 - alpha) * c2)
    m1, m2 = merge(theta0, tau, c1), merge(theta0, tau, c2)
    for k in theta0:
        torch.testing.assert_close(
            combined[k], alpha * m1[k] + (1 - alpha) * m2[k], rtol=1e-4, atol=1e-4
        )
