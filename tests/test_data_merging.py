"""Fisher merging and RegMean: closed forms on a 2-layer model written out by hand, the open_clip
attention capture, then the methods end to end (random mini checkpoints, random ViT-B/32 in the
public format)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from fake_data import write_fake_dataset
from model_fixtures import MINI_TASKS, mini_argv, write_mini_problem, write_random_checkpoints
from torch import nn
from torch.func import functional_call

from adamerging.checkpoints.loading import load_checkpoint
from adamerging.commands import pipeline
from adamerging.methods.fisher import FisherAverage, batches, fisher_diagonal
from adamerging.methods.registry import METHODS
from adamerging.methods.regmean import RegMeanSums, attention_context, gram_sums, linear_inputs
from adamerging.models.clip import create_clip
from adamerging.run.train_data import sample_indices
from adamerging.runtime.errors import DatasetError


def _two_layer(seed: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Linear(5, 4) -> ReLU -> Linear(4, 3), and one expert's parameters for it."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    return model, {name: torch.randn(p.shape, generator=g) for name, p in model.named_parameters()}


def _forward(model):
    return lambda params, x: functional_call(model, params, (x,))


# Fisher -------------------------------------------------------------------------------------------


def test_fisher_diagonal_is_the_squared_batch_gradient_written_by_hand():
    model, params = _two_layer(0)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    got = fisher_diagonal(_forward(model), params, batches(x, 4))  # batches of 4 and 2
    expected = {name: torch.zeros_like(p) for name, p in params.items()}
    for b in (x[:4], x[4:]):
        pre = b @ params["0.weight"].T + params["0.bias"]
        h = pre.clamp(min=0)
        z = h @ params["2.weight"].T + params["2.bias"]
        p = z.softmax(-1)
        s = p.sqrt()
        # d/dz sum_y s_y log softmax(z)_y, with s held constant
        dz = s - p * s.sum(-1, keepdim=True)
        dpre = (dz @ params["2.weight"]) * (pre > 0)
        grads = {
            "2.weight": dz.T @ h,
            "2.bias": dz.sum(0),
            "0.weight": dpre.T @ b,
            "0.bias": dpre.sum(0),
        }
        for name, g in grads.items():  # the batch's summed gradient, squared
            expected[name] += g**2
    for name in params:
        torch.testing.assert_close(got[name], expected[name] / 6, rtol=1e-5, atol=1e-7)
    # a batch's gradient summed over micro-batches: the same estimate, less memory
    chunked = fisher_diagonal(_forward(model), params, batches(x, 4), micro_batch=1)
    for name in params:
        torch.testing.assert_close(chunked[name], got[name], rtol=1e-5, atol=1e-7)
    # the batch-level square is what FusionBench computes: other batches give another estimate
    other = fisher_diagonal(_forward(model), params, batches(x, 1))
    assert not torch.allclose(other["2.weight"], got["2.weight"])


def test_fisher_average_is_the_fisher_weighted_average():
    thetas = [{"w": torch.tensor([1.0, 2.0, 3.0])}, {"w": torch.tensor([5.0, -2.0, 0.0])}]
    # norms 5 and sqrt(5)
    fishers = [torch.tensor([3.0, 0.0, 4.0]), torch.tensor([1.0, 2.0, 0.0])]
    floor = 1e-3
    average = FisherAverage(floor)
    norms = [average.add(theta, {"w": f.clone()}) for theta, f in zip(thetas, fishers)]
    assert norms == pytest.approx([5.0, math.sqrt(5.0)])
    w = [(f + floor) / (n + floor) for f, n in zip(fishers, norms)]
    expected = (w[0] * thetas[0]["w"] + w[1] * thetas[1]["w"]) / (w[0] + w[1])
    torch.testing.assert_close(average.result()["w"], expected)
    # where one expert has all the information, its value wins; equal Fisher gives the plain average
    assert float(expected[1]) == pytest.approx(-2.0, abs=0.01) and float(
        expected[2]
    ) == pytest.approx(3.0, abs=0.01)
    same = FisherAverage(floor)
    for theta in thetas:
        same.add(theta, {"w": torch.ones(3)})
    torch.testing.assert_close(same.result()["w"], (thetas[0]["w"] + thetas[1]["w"]) / 2)


# RegMean ------------------------------------------------------------------------------------------


def _regmean(models_params, inputs, ratio, batch_size=7):
    model = _two_layer(0)[0]
    sums = RegMeanSums(ratio)
    for params, x in zip(models_params, inputs):
        gram_sums(_forward(model), model, params, x, batch_size, sums)
    return sums.solve()


def test_regmean_with_ratio_one_is_least_squares_on_the_stacked_task_inputs():
    experts = [_two_layer(s)[1] for s in (1, 2)]
    inputs = [torch.randn(20, 5, generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
    got = _regmean(experts, inputs, ratio=1.0)
    # linear weights only
    assert sorted(got) == ["0.weight", "2.weight"]
    # each expert's own inputs
    hidden = [(x @ e["0.weight"].T + e["0.bias"]).clamp(min=0) for x, e in zip(inputs, experts)]
    for name, xs in (("0.weight", inputs), ("2.weight", hidden)):
        # W minimising sum_t ||X_t W^T - X_t W_t^T||^2
        stacked = torch.cat(xs).double()
        targets = torch.cat([x @ e[name].T for x, e in zip(xs, experts)]).double()
        expected = torch.linalg.lstsq(stacked, targets).solution.T.float()
        torch.testing.assert_close(got[name], expected, rtol=1e-4, atol=1e-4)


def test_regmean_scales_non_diagonal_gram_entries_and_ignores_batching():
    experts = [_two_layer(s)[1] for s in (1, 2)]
    inputs = [torch.randn(20, 5, generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
    ratio = 0.5

    def reduced(x):
        g = x.T @ x / len(x)
        return g * ratio + torch.diag(g.diagonal()) * (1 - ratio)

    grams = [reduced(x) for x in inputs]
    expected = torch.linalg.solve(
        sum(grams), sum(g @ e["0.weight"].T for g, e in zip(grams, experts))
    ).T
    got = _regmean(experts, inputs, ratio)
    torch.testing.assert_close(got["0.weight"], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        _regmean(experts, inputs, ratio, batch_size=20)["0.weight"],
        got["0.weight"],
        rtol=1e-5,
        atol=1e-6,
    )
    assert not torch.allclose(
        _regmean(experts, inputs, 1.0)["0.weight"], got["0.weight"], atol=1e-3
    )
    # a singular Gram matrix (ratio 1, fewer rows than features) is a one-line error naming the
    # layer
    with pytest.raises(ValueError, match=r"Gram matrix of \d\.weight is singular"):
        _regmean(experts, [x[:2] for x in inputs], 1.0)


def test_attention_capture_recomputes_the_out_proj_input_of_open_clip_blocks():
    torch.manual_seed(0)
    visual = create_clip("mini").visual.eval()
    x = torch.randn(3, 17, 128)
    attn = visual.transformer.resblocks[0].attn
    with torch.no_grad():
        out = attn(x, x, x, need_weights=False)[0]
        torch.testing.assert_close(
            F.linear(attention_context(attn, x), attn.out_proj.weight, attn.out_proj.bias),
            out,
            rtol=1e-5,
            atol=1e-5,
        )
    seen: dict[str, torch.Size] = {}
    with (
        torch.no_grad(),
        linear_inputs(visual, lambda name, inp: seen.setdefault(name, inp.shape)) as names,
    ):
        visual(torch.randn(2, 3, 32, 32))
    per_block = [
        "attn.in_proj_weight",
        "attn.out_proj.weight",
        "mlp.c_fc.weight",
        "mlp.c_proj.weight",
    ]
    assert (
        sorted(names)
        == sorted(seen)
        == sorted(f"transformer.resblocks.{i}.{n}" for i in range(4) for n in per_block)
    )
    # 16 patches + class token, MLP width
    assert seen["transformer.resblocks.0.mlp.c_proj.weight"] == (2, 17, 512)
    # removed on exit
    assert not visual._forward_hooks and not visual.transformer.resblocks[0].attn._forward_hooks


def test_train_sample_is_seeded_per_task_and_capped_by_the_split():
    a = sample_indices(100, 10, seed=0, task="MNIST")
    assert list(a) == sorted(set(a.tolist())) and len(a) == 10
    assert list(a) == list(sample_indices(100, 10, seed=0, task="MNIST"))
    assert (
        list(a)
        != list(sample_indices(100, 10, seed=1, task="MNIST"))
        != list(sample_indices(100, 10, seed=0, task="SVHN"))
    )
    assert list(sample_indices(4, 10, seed=0, task="MNIST")) == [0, 1, 2, 3]


# end to end ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_mini_problem(tmp_path_factory.mktemp("mini"), n_per_class=4)


def _run(method, root, *extra, model_tasks="MNIST,SVHN,EuroSAT"):
    argv = mini_argv(
        root,
        "--overwrite",
        "--train-images",
        "12",
        "--train-batch-size",
        "5",
        *extra,
        tasks=model_tasks,
    )
    return pipeline.run(method, pipeline.parse_config(method, argv))


def _experts(root, model="mini", tasks=MINI_TASKS):
    folder = root / "checkpoints" / model
    return [load_checkpoint(folder / t / "finetuned.pt").state_dict for t in tasks]


def test_data_based_methods_merge_within_the_experts_and_record_the_train_images(mini, tmp_path):
    experts = _experts(mini)
    fisher = _run("fisher_merging", mini, "--save-merged", str(tmp_path / "fisher.safetensors"))
    regmean = _run("regmean", mini, "--save-merged", str(tmp_path / "regmean.safetensors"))
    from safetensors.torch import load_file

    merged_f, merged_r = (
        load_file(str(tmp_path / "fisher.safetensors")),
        load_file(str(tmp_path / "regmean.safetensors")),
    )
    visual = [k for k in experts[0] if k.startswith("model.visual.")]
    for key in visual:
        stack = torch.stack([e[key] for e in experts])
        # Fisher merging: a positive weighted average, inside the experts' range entry by entry
        assert bool(
            (merged_f[key] >= stack.min(0).values - 1e-6).all()
            and (merged_f[key] <= stack.max(0).values + 1e-6).all()
        ), key
        if key.endswith(("in_proj_weight", "out_proj.weight", "c_fc.weight", "c_proj.weight")):
            # solved by least squares
            assert not torch.allclose(merged_r[key], stack.mean(0), atol=1e-4), key
        else:
            # averaged, as FusionBench
            torch.testing.assert_close(merged_r[key], stack.mean(0))
    assert not torch.allclose(
        merged_f["model.visual.proj"],
        torch.stack([e["model.visual.proj"] for e in experts]).mean(0),
    )
    for result in (fisher, regmean):
        used = result["merge_rule"]["train_data"]
        assert list(used) == list(MINI_TASKS) and all(
            u["split"] == "train" and u["n_images"] == 12 and u["n_available"] == 40
            for u in used.values()
        )
        assert result["config"]["train_images"] == 12 and result["coefficients"] is None
        assert (
            json.loads((mini / "results" / "mini" / f"{result['method']}.json").read_text())[
                "merge_rule"
            ]["train_data"]
            == used
        )
    assert len(regmean["merge_rule"]["regmean_layers"]) == 16
    again = _run("fisher_merging", mini)
    assert (
        again["accuracy"] == fisher["accuracy"]
        and again["merge_rule"]["fisher_norms"] == fisher["merge_rule"]["fisher_norms"]
    )
    other = _run("fisher_merging", mini, "--seed", "1")
    assert (
        other["merge_rule"]["train_data"]["MNIST"]["indices_sha1"]
        != fisher["merge_rule"]["train_data"]["MNIST"]["indices_sha1"]
    )


def test_multitask_evaluates_the_jointly_fine_tuned_encoder(mini, tmp_path):
    result = _run("multitask", mini, "--save-merged", str(tmp_path / "mtl.pt"))
    saved = torch.load(tmp_path / "mtl.pt", weights_only=True)
    mtl = load_checkpoint(mini / "checkpoints/mini/multitask/finetuned.pt").state_dict
    for key in mtl:
        if key.startswith("model.visual."):
            assert torch.equal(saved[key], mtl[key]), key
    assert result["title"] == "Traditional MTL" and set(result["accuracy"]) == set(MINI_TASKS)


def test_a_missing_train_split_is_a_one_line_error_before_any_statistics(tmp_path):
    root = write_mini_problem(tmp_path)
    import shutil

    shutil.rmtree(root / "data" / "EuroSAT_splits" / "train")
    with pytest.raises(DatasetError, match="EuroSAT"):
        _run("regmean", root)
    (root / "checkpoints" / "mini" / "multitask" / "finetuned.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"multitask/finetuned\.pt"):
        _run("multitask", root)


def test_fisher_merging_and_regmean_on_random_vit_b32_checkpoints_in_the_public_format(tmp_path):
    tasks = {"MNIST": 10, "SVHN": 10}
    write_random_checkpoints(tmp_path / "checkpoints", "ViT-B-32", tasks)
    for task in tasks:
        write_fake_dataset(task, tmp_path / "data", n_per_class=1, image_size=8, split="both")
    argv = [
        "--model",
        "ViT-B-32",
        "--checkpoints",
        str(tmp_path / "checkpoints"),
        "--data-location",
        str(tmp_path / "data"),
        "--results-dir",
        str(tmp_path / "results"),
        "--tasks",
        "MNIST,SVHN",
        "--no-progress",
        "--batch-size",
        "10",
        "--train-images",
        "3",
        "--train-batch-size",
        "2",
    ]
    for method, entries in (("fisher_merging", None), ("regmean", 48)):
        result = pipeline.run(method, pipeline.parse_config(method, argv))
        assert set(result["accuracy"]) == set(tasks) and all(
            0 <= a <= 100 for a in result["accuracy"].values()
        )
        assert [u["n_images"] for u in result["merge_rule"]["train_data"].values()] == [3, 3]
        if entries:
            # 12 blocks x 4 linear weights
            assert len(result["merge_rule"]["regmean_layers"]) == entries
        else:
            assert all(n > 0 for n in result["merge_rule"]["fisher_norms"].values())


def test_activation_checkpointing_gives_the_same_fisher_and_coefficients_are_refused(mini):
    plain = _run("fisher_merging", mini)
    checkpointed = _run("fisher_merging", mini, "--checkpointing")
    assert checkpointed["merge_rule"]["fisher_norms"] == pytest.approx(
        plain["merge_rule"]["fisher_norms"], rel=1e-5
    )
    with pytest.raises(ValueError, match="drop --coefficients"):
        _run("regmean", mini, "--coefficients", "published")


def test_the_data_based_methods_hold_no_task_vectors_and_read_every_expert_file_first(
    mini, tmp_path
):
    from adamerging.merging.encoder import MergedEncoder
    from adamerging.merging.task_vectors import is_zero_view
    from adamerging.run.experts import load_task_vectors

    config = pipeline.parse_config("regmean", mini_argv(mini))
    assert METHODS["regmean"].vectors == METHODS["fisher_merging"].vectors == "none"
    vectors = load_task_vectors(config, "none")
    assert vectors.tau and all(is_zero_view(t) for t in vectors.tau.values())
    merged = MergedEncoder(vectors.clip.visual, vectors.theta0, vectors.tau, vectors.entries, "cpu")
    assert all(is_zero_view(t) for t in merged.tau.values())
    with pytest.raises(FileNotFoundError, match=r"DTD: fine-tuned encoder not found"):
        load_task_vectors(
            pipeline.parse_config("regmean", mini_argv(mini, tasks="MNIST,DTD")), "none"
        )
