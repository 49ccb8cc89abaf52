"""On a CUDA machine only (marked `cuda`, skipped elsewhere; `pytest -m cuda` runs just these): the
GPU step against the CPU step in IEEE fp32, chunked = fused there, the auto plan, resident and
prefetched images, evaluation, and a script end to end. benchmarks/gpu_check.py measures the rest
(speed, ViT-L/14 memory)."""

import warnings

import pytest
import torch
from test_adaptation import _problem
from test_device import _config, _on, _relative, _step_gradient
from test_pipeline import _argv, run

from adamerging.merging.encoder import MergedEncoder
from adamerging.methods import adamerging as adaptation
from adamerging.methods.adamerging import AdaMerging, Lambdas, adamerge, adamerging_step
from adamerging.methods.feed import Feed
from adamerging.methods.plan import plan_for
from adamerging.models.evaluation import evaluate_accuracy
from adamerging.runtime.device import check_device, set_precision

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def _ieee_fp32():
    set_precision("fp32", "cuda")
    yield
    set_precision("fp32", "cpu")


def _raw(rows: int, tasks: int) -> torch.Tensor:
    return 0.3 + 0.2 * torch.rand(rows, tasks, generator=torch.Generator().manual_seed(5))


def test_the_gpu_step_gives_the_cpu_loss_and_lambdas_gradient_in_ieee_fp32():
    problem = _problem(tasks=3, images=24)
    raw = _raw(len(problem[3]), 3)
    cpu_loss, cpu_grad = _step_gradient(problem, raw, "cpu", adapt_mode="fused")
    gpu_loss, gpu_grad = _step_gradient(problem, raw, "cuda", adapt_mode="fused")
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-5)
    assert (
        float(torch.nn.functional.cosine_similarity(gpu_grad.flatten(), cpu_grad.flatten(), dim=0))
        >= 0.99999
    )


def test_chunked_equals_fused_on_the_gpu_and_auto_measures_its_plan():
    problem = _problem(tasks=3, images=24)
    raw = _raw(len(problem[3]), 3)
    _, fused = _step_gradient(problem, raw, "cuda", adapt_mode="fused")
    for chunk in (1, 5, 24):
        _, chunked = _step_gradient(problem, raw, "cuda", adapt_mode="chunked", adapt_chunk=chunk)
        assert _relative(chunked, fused) <= 1e-5
    clip, theta0, tau, entries, data, normalize = _on(problem, "cuda")
    result = adamerge(
        MergedEncoder(clip.visual, theta0, tau, entries, "cuda"),
        data,
        normalize,
        _config(device="cuda", steps=2),
        "layer-wise",
    )
    assert result.plan == "fused"  # the mini model's 24 images fit any GPU


def test_a_step_waits_on_the_device_once():
    clip, theta0, tau, entries, data, normalize = _on(_problem(images=48), "cuda")
    config = _config(device="cuda")
    merged = MergedEncoder(clip.visual, theta0, tau, entries, "cuda")
    lambdas = Lambdas(len(entries), 2, 0.3).to("cuda")
    run_ = AdaMerging(
        merged,
        lambdas,
        torch.optim.Adam(lambdas.parameters(), lr=0.01),
        data,
        normalize,
        config,
        torch.Generator().manual_seed(0),
        plan=plan_for(config, merged.device),
    )
    run_.feed = Feed(data, run_.mine, merged.device, 8, run_.generator)
    adamerging_step(run_)  # the first: the plan is measured, Adam's state made
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            adamerging_step(run_)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, syncs  # the loss and its finiteness, together


def test_resident_and_prefetched_images_give_the_same_run(monkeypatch):
    clip, theta0, tau, entries, data, normalize = _on(_problem(images=48), "cuda")
    feed = Feed(data, [0, 1], torch.device("cuda"), 8, torch.Generator())
    assert all(images.is_cuda for images in feed.resident.values())
    resident = adamerge(
        MergedEncoder(clip.visual, theta0, tau, entries, "cuda"),
        data,
        normalize,
        _config(device="cuda", steps=3),
        "layer-wise",
    )
    # pinned host memory, prefetched
    monkeypatch.setattr(adaptation, "Feed", lambda *a: Feed(*a, resident=False))
    streamed = adamerge(
        MergedEncoder(clip.visual, theta0, tau, entries, "cuda"),
        data,
        normalize,
        _config(device="cuda", steps=3),
        "layer-wise",
    )
    # the same images in the same order; only the GPU's own run-to-run noise (atomics in backward)
    # may differ
    losses = lambda r: [x["loss"] for x in r.trajectory if "loss" in x]  # noqa: E731
    assert losses(streamed) == pytest.approx(losses(resident), rel=1e-5)
    torch.testing.assert_close(streamed.table.lambdas, resident.table.lambdas, rtol=0, atol=1e-4)


def test_gpu_evaluation_agrees_with_the_cpu_and_a_device_past_the_count_is_refused():
    problem = _problem(images=40)
    accs = {}
    for device in ("cpu", "cuda"):
        clip, theta0, tau, entries, data, normalize = _on(problem, device)
        encoder = MergedEncoder(clip.visual, theta0, tau, entries, device).encoder(
            torch.full((1, 2), 0.3)
        )
        accs[device] = [
            evaluate_accuracy(encoder, t.head, t.images, t.labels, normalize, 16) for t in data
        ]
    # at most one borderline image apart
    assert accs["cuda"] == pytest.approx(accs["cpu"], abs=100 / 40 + 1e-9)
    with warnings.catch_warnings(record=True) as caught:  # one transfer per task
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            evaluate_accuracy(encoder, data[0].head, data[0].images, data[0].labels, normalize, 16)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert len([w for w in caught if "synchroniz" in str(w.message)]) == 1
    with pytest.raises(ValueError, match="this machine has"):
        check_device(f"cuda:{torch.cuda.device_count()}")


def test_a_script_runs_end_to_end_on_the_gpu_and_records_its_numerics(mini, tmp_path):
    from safetensors.torch import load_file

    saved = {}
    # --save-merged merges where the task vectors are, writes from the host
    for device in ("cpu", "cuda"):
        run(
            "task_arithmetic",
            _argv(
                mini, "--device", device, "--save-merged", str(tmp_path / f"{device}.safetensors")
            ),
        )
        saved[device] = load_file(str(tmp_path / f"{device}.safetensors"))
    assert saved["cuda"].keys() == saved["cpu"].keys()
    for key, value in saved["cpu"].items():
        torch.testing.assert_close(saved["cuda"][key], value, rtol=1e-6, atol=1e-7)
    result = run("task_wise_adamerging", _argv(mini, "--device", "cuda", "--steps", "3"))
    assert result["config"]["device"] == "cuda" and result["adaptation"]["adapt_mode"] == "fused"
    assert (
        result["numerics"]["cuda_matmul_allow_tf32"] is False
        and result["numerics"]["cudnn_allow_tf32"] is False
    )
    tf32 = run(
        "task_wise_adamerging",
        _argv(mini, "--device", "cuda", "--steps", "3", "--precision", "tf32"),
    )
    assert tf32["numerics"]["cudnn_allow_tf32"] is True
    bf16 = run(
        "task_wise_adamerging",
        _argv(
            mini,
            "--device",
            "cuda",
            "--steps",
            "3",
            "--precision",
            "bf16",
            "--adapt-mode",
            "chunked",
        ),
    )
    assert bf16["adaptation"]["adapt_mode"].startswith("chunked") and all(
        0 <= a <= 100 for a in bf16["accuracy"].values()
    )
