"""Task Arithmetic, TIES and the merge function against obviously-correct dense references."""

import itertools
import json

import pytest
import torch

from adamerging.merging.tables import CoefficientTable, constant_table, load_table, published_table
from adamerging.merging.task_vectors import (
    is_zero_view,
    merge,
    merge_entry,
    task_vectors,
    zero_task_vectors,
)
from adamerging.merging.ties import elect_and_select, ties_select, trim_top_k


def _reference_ties(tvs: list[dict], k: float, combine: str) -> list[dict]:
    """Element-by-element TIES, written for clarity, not speed."""
    keys = sorted(tvs[0])
    flat = [[float(x) for key in keys for x in tv[key].flatten()] for tv in tvs]
    d = len(flat[0])
    kth = max(d - int(d * k), 1)
    trimmed = []
    for row in flat:
        cutoff = sorted(abs(x) for x in row)[kth - 1]
        trimmed.append([x if abs(x) >= cutoff else 0.0 for x in row])
    sums = [sum(row[i] for row in trimmed) for i in range(d)]
    sign = [(s > 0) - (s < 0) for s in sums]
    total = sum(sign)
    majority = (total > 0) - (total < 0)
    sign = [s if s != 0 else majority for s in sign]
    selected = [
        [
            x if (sign[i] > 0 and x > 0) or (sign[i] < 0 and x < 0) else 0.0
            for i, x in enumerate(row)
        ]
        for row in trimmed
    ]
    if combine == "mean":
        counts = [max(1, sum(1 for row in selected if row[i] != 0)) for i in range(d)]
        selected = [[x / counts[i] for i, x in enumerate(row)] for row in selected]
    out = []
    for row in selected:
        sd, offset = {}, 0
        for key in keys:
            n = tvs[0][key].numel()
            sd[key] = torch.tensor(row[offset : offset + n]).reshape(tvs[0][key].shape)
            offset += n
        out.append(sd)
    return out


def _stack(tvs):
    return {key: torch.stack([tv[key] for tv in tvs]) for key in tvs[0]}


def _small_problem(seed=0, tasks=3):
    g = torch.Generator().manual_seed(seed)
    theta0 = {
        "b.weight": torch.randn(3, 2, generator=g),
        "a.bias": torch.randn(4, generator=g),
        "c": torch.randn(1, generator=g),
    }
    finetuned = [
        {k: v + torch.randn(v.shape, generator=g) for k, v in theta0.items()} for _ in range(tasks)
    ]
    return theta0, finetuned


def test_task_vectors_and_task_arithmetic_match_reference():
    theta0, finetuned = _small_problem()
    tau = task_vectors(theta0, finetuned)
    merged = merge(theta0, tau, constant_table(["x", "y", "z"], 0.3).lambdas)
    for key in theta0:
        expected = theta0[key] + 0.3 * sum(ft[key] - theta0[key] for ft in finetuned)
        torch.testing.assert_close(merged[key], expected)


@pytest.mark.parametrize("combine", ["sum", "mean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ties_matches_reference(seed, combine):
    theta0, finetuned = _small_problem(seed)
    tvs = [{k: ft[k] - theta0[k] for k in theta0} for ft in finetuned]
    ours = ties_select(_stack(tvs), 0.2, combine)
    ref = _reference_ties(tvs, 0.2, combine)
    for t, key in itertools.product(range(3), theta0):
        torch.testing.assert_close(ours[key][t], ref[t][key])


def test_ties_keeps_ties_at_cutoff_and_uses_majority_for_zero_sums():
    # Task 0 has three entries tied at the cut-off magnitude: all are kept.
    # Entry 0: +1 and -1 cancel (sum 0) -> elected sign is the majority sign of the rest (+).
    tvs = [
        {"w": torch.tensor([1.0, 2.0, 2.0, 2.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])},
        {"w": torch.tensor([-1.0, 3.0, 3.0, 3.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])},
    ]
    ref = _reference_ties(tvs, 0.3, "sum")
    ours = ties_select(_stack(tvs), 0.3, "sum")
    for t in range(2):
        torch.testing.assert_close(ours["w"][t], ref[t]["w"])
    # k = 10 - int(3) = 7th smallest |x| of task 0 is 2.0: the three 2.0 entries survive (ties
    # kept).
    assert ours["w"][0][1:4].tolist() == [2.0, 2.0, 2.0]
    # entry 0 sums to 0: the majority sign (+) wins, so task 0's +1 is kept and task 1's -1 zeroed.
    assert ours["w"][0][0] == 1.0 and ours["w"][1][0] == 0.0


def test_ties_full_k_is_identity_when_signs_agree():
    tvs = [{"w": torch.tensor([1.0, 2.0, -3.0])}, {"w": torch.tensor([0.5, 1.0, -1.0])}]
    out = ties_select(_stack(tvs), 1.0, "sum")
    torch.testing.assert_close(out["w"], _stack(tvs)["w"])


def test_layer_wise_rows_apply_to_their_entries():
    theta0, finetuned = _small_problem()
    tau = task_vectors(theta0, finetuned)
    entries = list(theta0)
    lambdas = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.1, 0.9], [1.0, 0.0, 0.0]])
    merged = merge(theta0, tau, lambdas, entries)
    # all-zero row: theta_0 untouched
    torch.testing.assert_close(merged["b.weight"], theta0["b.weight"])
    torch.testing.assert_close(
        merged["a.bias"],
        theta0["a.bias"] + 0.5 * tau["a.bias"][0] + 0.1 * tau["a.bias"][1] + 0.9 * tau["a.bias"][2],
    )
    torch.testing.assert_close(merged["c"], finetuned[0]["c"])


def test_merge_rejects_wrong_shapes():
    theta0, finetuned = _small_problem()
    tau = task_vectors(theta0, finetuned)
    with pytest.raises(ValueError, match="rows"):
        merge(theta0, tau, torch.ones(2, 4))
    with pytest.raises(ValueError, match="columns"):
        merge(theta0, tau, torch.ones(1, 4))  # 3 tasks


def test_task_vectors_name_the_mismatch():
    theta0, finetuned = _small_problem()
    finetuned[1]["a.bias"] = torch.zeros(5)
    with pytest.raises(ValueError, match=r"Cars.*a\.bias.*\(5,\).*\(4,\)"):
        task_vectors(theta0, finetuned, ["SUN397", "Cars", "DTD"])


def test_published_tables_have_the_papers_shapes():
    for method, model, rows in [
        ("lw_adamerging", "ViT-B-32", 158),
        ("lw_adamergingpp", "ViT-L-14", 302),
        ("tw_adamerging", "ViT-B-32", 1),
    ]:
        table = published_table(method, model)
        # the pretrained column (all 1) is checked and dropped
        assert tuple(table.lambdas.shape) == (rows, 8)
    with pytest.raises(ValueError, match="published"):
        published_table("lw_adamerging", "mini")


def test_table_reorders_columns_and_checks_rows(tmp_path):
    table = CoefficientTable(torch.tensor([[0.1, 0.2], [0.3, 0.4]]), ["A", "B"], ["k0", "k1"])
    sub = table.for_entries(["B"], ["k0", "k1"])
    torch.testing.assert_close(sub.lambdas, torch.tensor([[0.2], [0.4]]))
    with pytest.raises(ValueError, match="no column"):
        table.for_entries(["C"], ["k0", "k1"])
    with pytest.raises(ValueError, match="rows"):
        table.for_entries(["A"], ["k0", "k1", "k2"])
    with pytest.raises(ValueError, match="row 1"):
        table.for_entries(["A"], ["k0", "kX"])
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"coefficients": table.to_json()}))
    assert torch.equal(load_table(path).lambdas, table.lambdas)
    path.write_text(json.dumps({"values": [[1, 2]]}))
    with pytest.raises(ValueError, match="columns"):
        load_table(path)


def test_merge_entry_is_theta0_plus_the_lambda_weighted_task_vectors():
    theta0_j, tau_j = torch.randn(4, 3), torch.randn(2, 4, 3)
    lambdas_j = torch.tensor([0.3, 0.7], requires_grad=True)
    merged = merge_entry(theta0_j, lambdas_j, tau_j)
    torch.testing.assert_close(merged, theta0_j + 0.3 * tau_j[0] + 0.7 * tau_j[1])
    merged.sum().backward()
    torch.testing.assert_close(lambdas_j.grad, tau_j.sum(dim=(1, 2)))
    # bit-identical to the published tables' form 1 * theta_0 + ...
    assert torch.equal(merged, 1.0 * theta0_j + torch.tensordot(lambdas_j, tau_j, dims=1))


@pytest.mark.parametrize("shape", [(), (7,), (33, 5), (4, 3, 2, 2)])
def test_merge_entry_in_place_add_is_bit_identical_to_the_tensordot_form_in_value_and_gradient(
    shape,
):
    g = torch.Generator().manual_seed(1)
    theta0_j, tau_j, upstream = (
        torch.randn(shape, generator=g),
        torch.randn((3, *shape), generator=g),
        torch.randn(shape, generator=g),
    )
    raw = torch.rand(3, generator=g).requires_grad_(True)
    before = theta0_j.clone()
    merged = merge_entry(theta0_j, raw.clamp(0, 1), tau_j)
    merged.backward(upstream)
    reference_raw = raw.detach().clone().requires_grad_(True)
    reference = theta0_j + torch.tensordot(reference_raw.clamp(0, 1), tau_j, dims=1)
    reference.backward(upstream)
    assert (
        merged.shape == theta0_j.shape
        and torch.equal(merged, reference)
        and torch.equal(raw.grad, reference_raw.grad)
    )
    assert torch.equal(theta0_j, before)  # theta_0 is read, never written


def test_table_json_keeps_the_pretrained_column_and_rejects_one_that_is_not_1(tmp_path):
    table = CoefficientTable(torch.tensor([[0.25, 0.5]]), ["A", "B"])
    data = table.to_json()
    assert (
        data["columns"] == ["pretrained", "A", "B"]
        and data["values"] == [[1.0, 0.25, 0.5]]
        and data["granularity"] == "task-wise"
    )
    assert torch.equal(CoefficientTable.from_json(data).lambdas, table.lambdas)
    # before rows -> entries
    legacy = {
        "columns": ["pretrained", "A"],
        "rows": ["k0", "k1"],
        "values": [[1.0, 0.1], [1.0, 0.2]],
    }
    assert CoefficientTable.from_json(legacy).entries == ["k0", "k1"]
    with pytest.raises(
        ValueError, match=r"t\.json: the pretrained column must be 1.*row 1 has 0\.5"
    ):
        path = tmp_path / "t.json"
        path.write_text(
            json.dumps({"columns": ["pretrained", "A"], "values": [[1.0, 0.1], [0.5, 0.2]]})
        )
        load_table(path)


def _dense_ties(tau: dict, k: float, combine: str) -> dict:
    """The previous dense implementation: one flattened [T, D] copy, `trim_top_k` +
    `elect_and_select`."""
    keys = sorted(tau)
    num_tasks = next(iter(tau.values())).shape[0]
    flat = torch.cat([tau[key].reshape(num_tasks, -1) for key in keys], dim=1)
    _, selected = elect_and_select(trim_top_k(flat, k))
    if combine == "mean":
        selected = selected / (selected != 0).sum(dim=0).clamp(min=1)
    out, offset = {}, 0
    for key in keys:
        n = tau[key][0].numel()
        out[key] = selected[:, offset : offset + n].reshape(tau[key].shape)
        offset += n
    return out


def _tied_problem(seed: int, tasks: int = 4):
    """Small integer-valued task vectors: many ties at the cut-off, many exactly-zero sign sums,
    exact zeros inside entries, and two text-side leftovers that no expert changed (stored as zero
    views)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "model.visual.conv1.weight": (5, 3, 2, 2),
        "model.visual.ln_pre.bias": (7,),
        "model.visual.proj": (6, 4),
        "model.token_embedding.weight": (9, 4),
        "model.ln_final.bias": (4,),
    }
    theta0 = {key: torch.randn(shape, generator=g) for key, shape in shapes.items()}
    theta0["model.visual.count"] = torch.tensor([3])  # integer buffer: no task vector
    finetuned = []
    for _ in range(tasks):
        sd = {}
        for key, base in theta0.items():
            if key.startswith("model.visual.") and base.is_floating_point():
                sd[key] = base + torch.randint(-3, 4, base.shape, generator=g).float()
            else:
                sd[key] = base.clone()
        finetuned.append(sd)
    return theta0, finetuned


@pytest.mark.parametrize("combine", ["sum", "mean"])
@pytest.mark.parametrize("k", [0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_low_memory_ties_equals_dense_exactly(seed, k, combine):
    theta0, finetuned = _tied_problem(seed)
    tau = task_vectors(theta0, iter(finetuned), tasks=["a", "b", "c", "d"])  # one expert at a time
    assert is_zero_view(tau["model.token_embedding.weight"]) and is_zero_view(
        tau["model.ln_final.bias"]
    )
    assert "model.visual.count" not in tau
    dense_input = {key: t.contiguous() for key, t in tau.items()}  # the zero leftovers materialised
    expected = _dense_ties(dense_input, k, combine)
    for inplace in (False, True):
        source = {key: t if is_zero_view(t) else t.clone() for key, t in tau.items()}
        ours = ties_select(source, k, combine, inplace=inplace)
        assert list(ours) == list(tau)
        for key in tau:
            assert torch.equal(ours[key], expected[key]), (key, inplace)
        assert is_zero_view(ours["model.token_embedding.weight"])
        # written in place or not
        assert (ours["model.visual.proj"] is source["model.visual.proj"]) == inplace
    # the selection kept something
    assert any(bool((t == 0).all()) is False for t in expected.values())


def test_low_memory_ties_majority_sign_and_cutoff_inside_the_zero_leftovers():
    # D = 12 (4 stored + 8 implicit zeros); k = 0.5 -> kth = 6 falls among the zeros: cut-off 0, all
    # kept. Entry 0 sums to 0; the majority of the elected signs (2 negative, 1 positive) is
    # negative.
    tau = {
        "w": torch.tensor([[1.0, -2.0, -1.0, 0.5], [-1.0, 1.0, -1.0, 0.0]]),
        "z": zero_task_vectors(2, (8,)),
    }
    dense = _dense_ties({key: t.contiguous() for key, t in tau.items()}, 0.5, "sum")
    ours = ties_select(tau, 0.5, "sum")
    assert torch.equal(ours["w"], dense["w"]) and torch.equal(ours["z"], dense["z"])
    assert ours["w"][:, 0].tolist() == [0.0, -1.0]


def test_task_vectors_store_untouched_entries_as_zero_views_and_merge_them():
    theta0, finetuned = _tied_problem(0)
    tau = task_vectors(theta0, finetuned)
    leftover = tau["model.token_embedding.weight"]
    assert leftover.shape == (4, 9, 4) and leftover.untyped_storage().nbytes() == 4
    merged = merge(theta0, tau, constant_table(["a", "b", "c", "d"], 0.3).lambdas)
    assert torch.equal(
        merged["model.token_embedding.weight"], theta0["model.token_embedding.weight"]
    )
    with pytest.raises(ValueError, match="expected 4 fine-tuned models, got 3"):
        task_vectors(theta0, iter(finetuned[:3]), tasks=["a", "b", "c", "d"])
