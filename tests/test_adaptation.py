"""The functional merge-and-forward loop: gradients, clamp, equivalence with in-place merging,
learning."""

import pytest
import torch

from adamerging.merging.encoder import MergedEncoder
from adamerging.merging.tables import published_table
from adamerging.merging.task_vectors import merge
from adamerging.methods.adamerging import Lambdas, adamerge
from adamerging.models.clip import (
    VISUAL_PREFIX,
    create_clip,
    encoder_state_dict,
    load_encoder_weights,
    normalization,
)
from adamerging.models.evaluation import Normalizer
from adamerging.models.heads import Head
from adamerging.models.objectives import softmax_entropy
from adamerging.run.config import RunConfig
from adamerging.run.problem import TaskData


def _problem(model="mini", tasks=2, classes=4, images=32, scale=0.02, seed=0):
    torch.manual_seed(seed)
    clip = create_clip(model)
    theta0 = {k: v.detach().clone() for k, v in encoder_state_dict(clip).items()}
    entries = list(theta0)
    g = torch.Generator().manual_seed(seed + 1)
    tau = {
        k: (
            scale
            * torch.randn((tasks, *v.shape), generator=g)
            * max(float(v.std()) if v.numel() > 1 else 1.0, 0.05)
        )
        for k, v in theta0.items()
    }
    dim = clip.visual.output_dim
    size = clip.visual.image_size[0]
    data = [
        TaskData(
            f"T{i}",
            torch.randint(0, 256, (images, 3, size, size), generator=g, dtype=torch.uint8),
            Head(
                torch.nn.functional.normalize(torch.randn(classes, dim, generator=g), dim=1) * 30.0
            ),
            torch.randint(0, classes, (images,), generator=g),
        )
        for i in range(tasks)
    ]
    mean, std = normalization(clip)
    return clip, theta0, tau, entries, data, Normalizer(mean, std, "cpu")


def _loss(merged, data, normalize, lambdas):
    params = merged.params(lambdas())
    return sum(
        softmax_entropy(t.head(merged(params, normalize(t.images[:8])))).mean() for t in data
    )


def test_gradient_reaches_exactly_the_lambdas_and_text_rows_get_none():
    clip, theta0, tau, entries, data, normalize = _problem()
    merged = MergedEncoder(clip.visual, theta0, tau, entries, "cpu")
    lambdas = Lambdas(len(entries), 2, 0.3, clamp=True)
    _loss(merged, data, normalize, lambdas).backward()
    grad = lambdas.raw.grad
    visual_rows = torch.tensor([k.startswith(VISUAL_PREFIX) for k in entries])
    assert (grad[visual_rows].abs().sum(dim=1) > 0).all()  # every visual entry learns
    # text-side rows never get a gradient
    assert (grad[~visual_rows] == 0).all()
    assert not any(p.requires_grad for p in merged.visual.parameters())
    assert all(
        v.grad is None and not v.requires_grad
        for v in [*merged.theta0.values(), *merged.tau.values()]
    )
    assert all(t.head.weight.grad is None for t in data)


def test_clamp_gives_zero_gradient_outside_unit_interval():
    clip, theta0, tau, entries, data, normalize = _problem()
    merged = MergedEncoder(clip.visual, theta0, tau, entries, "cpu")
    j = entries.index("model.visual.proj")
    for clamp, expect_zero in [(True, True), (False, False)]:
        lambdas = Lambdas(len(entries), 2, 0.3, clamp=clamp)
        with torch.no_grad():
            lambdas.raw[j, 0] = 1.5
            lambdas.raw[j, 1] = -0.2
        _loss(merged, data, normalize, lambdas).backward()
        assert (lambdas.raw.grad[j] == 0).all() == expect_zero
        assert lambdas.raw.grad[j + 1].abs().sum() > 0


def test_functional_model_with_published_table_equals_in_place_merge():
    # The real ViT-B/32 architecture (random weights) and the authors' 158-row table, two tasks.
    clip, theta0, tau, entries, _, normalize = _problem("ViT-B-32", tasks=2, images=1)
    table = (
        published_table("lw_adamerging", "ViT-B-32").for_entries(["SVHN", "MNIST"], entries).lambdas
    )
    assert (table == 0).any(axis=1).any()
    merged = MergedEncoder(clip.visual, theta0, tau, entries, "cpu")
    x = normalize(torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8))
    with torch.no_grad():
        functional = merged(merged.params(table), x)
        reference_model = create_clip("ViT-B-32")
        load_encoder_weights(reference_model, merge(theta0, tau, table, entries))
        in_place = reference_model.encode_image(x)
    torch.testing.assert_close(functional, in_place, rtol=1e-4, atol=1e-5)


def _run(data, clip, theta0, tau, entries, normalize, granularity="layer-wise", **overrides):
    config = RunConfig(
        **{
            "steps": 20,
            "lr": 0.02,
            "batch_size_adapt": 16,
            "batches_per_step": 2,
            "no_progress": True,
            "device": "cpu",
            **overrides,
        }
    )
    merged = MergedEncoder(clip.visual, theta0, tau, entries, "cpu")
    return adamerge(merged, data, normalize, config, granularity)


def test_entropy_decreases_and_tables_have_the_right_shapes():
    clip, theta0, tau, entries, data, normalize = _problem(scale=0.2)
    # 32 images = 2 x 16: the whole set every step
    layer = _run(data, clip, theta0, tau, entries, normalize)
    losses = [r["loss"] for r in layer.trajectory if "loss" in r]
    assert losses[-1] < losses[0] - 0.01
    assert tuple(layer.table.lambdas.shape) == (len(entries), 2) and layer.table.entries == entries
    # the JSON's pretrained column
    assert all(row[0] == 1 for row in layer.table.to_json()["values"])
    text_rows = [j for j, k in enumerate(entries) if not k.startswith(VISUAL_PREFIX)]
    assert torch.allclose(layer.table.lambdas[text_rows], torch.tensor(0.3))
    task = _run(data, clip, theta0, tau, entries, normalize, granularity="task-wise", steps=3)
    assert tuple(task.table.lambdas.shape) == (1, 2) and task.table.entries is None


def test_same_seed_same_lambdas_and_per_task_mode_matches_fused():
    clip, theta0, tau, entries, data, normalize = _problem(images=64)
    a = _run(data, clip, theta0, tau, entries, normalize, steps=5, seed=3)
    b = _run(data, clip, theta0, tau, entries, normalize, steps=5, seed=3)
    c = _run(data, clip, theta0, tau, entries, normalize, steps=5, seed=3, adapt_mode="per-task")
    assert torch.equal(a.table.lambdas, b.table.lambdas)
    torch.testing.assert_close(a.table.lambdas, c.table.lambdas, rtol=0, atol=1e-5)
    d = _run(data, clip, theta0, tau, entries, normalize, steps=5, seed=4)
    assert not torch.equal(a.table.lambdas, d.table.lambdas)


def test_supervised_oracle_reads_labels_and_entropy_does_not():
    clip, theta0, tau, entries, data, normalize = _problem()
    sup = _run(data, clip, theta0, tau, entries, normalize, steps=2, objective="supervised")
    assert sup.table.lambdas.shape[0] == len(entries)
    unlabeled = [TaskData(t.name, t.images, t.head, None) for t in data]
    _run(unlabeled, clip, theta0, tau, entries, normalize, steps=2)  # entropy never touches labels
    with pytest.raises(ValueError, match="labels"):
        _run(unlabeled, clip, theta0, tau, entries, normalize, steps=2, objective="supervised")
