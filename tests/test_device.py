"""A run on a GPU machine, checked on the CPU: the chunked step's gradient, the adapt-mode choice
from the measured memory, out-of-memory stops that keep the last finished step, the device and
torchrun checks of every entry point, the precision flags, the lean step's feed, theta_0 once, and
--compile."""

import functools
import json

import pytest
import torch
from test_adaptation import _problem
from test_pipeline import _argv, run

import adamerging.methods.adamerging as adaptation
from adamerging.commands import pipeline
from adamerging.merging.encoder import MergedEncoder
from adamerging.methods import job as job_module
from adamerging.methods import plan as plan_module
from adamerging.methods.adamerging import AdaMerging, Lambdas, adamerge, adamerging_step
from adamerging.methods.feed import parts_of
from adamerging.methods.loop import AdaptationStopped
from adamerging.methods.plan import chunk_that_fits, plan_for
from adamerging.models.evaluation import Normalizer, accuracy, evaluate_accuracy, predict
from adamerging.run.config import RunConfig
from adamerging.run.problem import TaskData
from adamerging.runtime import device as device_mod
from adamerging.runtime import distributed
from adamerging.runtime.cli import run_cli
from adamerging.runtime.distributed import Ranks
from adamerging.runtime.errors import EXIT_STOPPED, EXIT_USER_ERROR


def _config(**kw) -> RunConfig:
    return RunConfig(
        **{
            "device": "cpu",
            "batch_size_adapt": 4,
            "batches_per_step": 2,
            "lr": 0.02,
            "no_progress": True,
            "save_every": 0,
            **kw,
        }
    )


def _on(problem, device: str):
    """`_problem`'s problem with its heads and normalisation on `device`."""
    clip, theta0, tau, entries, data, normalize = problem
    data = [TaskData(t.name, t.images, t.head.to(device), t.labels) for t in data]
    return (
        clip,
        theta0,
        tau,
        entries,
        data,
        Normalizer(normalize.mean.flatten().tolist(), normalize.std.flatten().tolist(), device),
    )


def _step_gradient(
    problem, raw: torch.Tensor, device: str = "cpu", **kw
) -> tuple[float, torch.Tensor]:
    """The loss and lambdas gradient (on the CPU) of one step from `raw`, with the sampler at seed
    0."""
    clip, theta0, tau, entries, data, normalize = _on(problem, device)
    config = _config(device=device, **kw)
    merged = MergedEncoder(clip.visual, theta0, tau, entries, device)
    lambdas = Lambdas(len(entries), len(data), raw).to(device)
    run = AdaMerging(
        merged,
        lambdas,
        torch.optim.SGD(lambdas.parameters(), lr=0.0),
        data,
        normalize,
        config,
        torch.Generator().manual_seed(0),
        plan=plan_for(config, merged.device),
    )
    loss = adamerging_step(run)
    return loss, lambdas.raw.grad.cpu().clone()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_chunked_and_per_task_steps_give_the_fused_loss_and_lambdas_gradient():
    problem = _problem(tasks=3, images=24)
    raw = 0.3 + 0.2 * torch.rand(len(problem[3]), 3, generator=torch.Generator().manual_seed(5))
    loss, grad = _step_gradient(problem, raw, adapt_mode="fused")
    assert grad.abs().sum() > 0
    for mode, chunk in [
        ("chunked", 1),
        ("chunked", 5),
        ("chunked", 8),
        ("chunked", 24),
        ("chunked", 0),
        ("per-task", 0),
    ]:
        other_loss, other = _step_gradient(problem, raw, adapt_mode=mode, adapt_chunk=chunk)
        assert _relative(other, grad) <= 1e-6, (mode, chunk, _relative(other, grad))
        assert other_loss == pytest.approx(loss, rel=1e-6)
    # the supervised oracle's cross-entropy splits the same way
    _, sup = _step_gradient(problem, raw, adapt_mode="fused", objective="supervised")
    _, sup_chunked = _step_gradient(
        problem, raw, adapt_mode="chunked", adapt_chunk=3, objective="supervised"
    )
    assert _relative(sup_chunked, sup) <= 1e-6


def test_chunk_parts_cover_the_images_once_and_the_chunk_fits_the_free_memory():
    whole = [(0, 0, 8), (2, 0, 8)]  # this rank's tasks 0 and 2, 8 images each
    assert parts_of(whole, 8, 0, 5) == [(0, 0, 5)]
    assert parts_of(whole, 8, 5, 10) == [(0, 5, 8), (2, 0, 2)]
    assert parts_of(whole, 8, 10, 16) == [(2, 2, 8)]
    # 64 MB of 85 MB usable: fused fits
    assert chunk_that_fits(64, 1e6, int(100e6)) == 64
    assert chunk_that_fits(64, 1e6, int(40e6)) == 34  # 0.85 x 40 MB / 1 MB
    assert chunk_that_fits(64, 1e9, int(1e6)) == 1  # never below one image
    # CPU: today's fused step
    assert str(plan_for(_config(adapt_mode="auto"), torch.device("cpu"))) == "fused"
    assert (
        str(plan_for(_config(adapt_mode="chunked"), torch.device("cpu")))
        == "chunked, 4 images per chunk"
    )


class _FakeMeter:
    """Stands in for device.PeakMeter on the CPU: 1000 bytes per image of the measured chunk (one
    batch, 4 images)."""

    def __init__(self, device):
        pass

    def grown(self) -> int:
        return 4 * 1000


@pytest.mark.parametrize("free, plan", [(10**9, "fused"), (10_000, "chunked, 8 images per chunk")])
def test_auto_mode_measures_the_first_chunk_and_keeps_the_gradient(monkeypatch, free, plan):
    problem = _problem(tasks=3, images=24)
    clip, theta0, tau, entries, data, normalize = problem
    fused = adamerge(
        MergedEncoder(clip.visual, theta0, tau, entries, "cpu"),
        data,
        normalize,
        _config(steps=3, adapt_mode="fused"),
        "layer-wise",
    )
    # as if the device reported its free memory
    monkeypatch.setattr(adaptation, "free_bytes", lambda device: free)
    monkeypatch.setattr(plan_module, "free_bytes", lambda device: free)
    monkeypatch.setattr(adaptation, "PeakMeter", _FakeMeter)
    auto = adamerge(
        MergedEncoder(clip.visual, theta0, tau, entries, "cpu"),
        data,
        normalize,
        _config(steps=3),
        "layer-wise",
    )
    assert auto.plan == plan
    torch.testing.assert_close(auto.table.lambdas, fused.table.lambdas, rtol=0, atol=1e-6)
    assert [r["loss"] for r in auto.trajectory if "loss" in r] == pytest.approx(
        [r["loss"] for r in fused.trajectory if "loss" in r], rel=1e-6
    )


def test_out_of_memory_in_a_step_keeps_the_last_finished_step_and_resumes_as_uninterrupted():
    problem = _problem(images=48)
    clip, theta0, tau, entries, data, normalize = problem
    merged = lambda: MergedEncoder(clip.visual, theta0, tau, entries, "cpu")  # noqa: E731
    full = adamerge(merged(), data, normalize, _config(steps=5), "layer-wise")
    calls = {"n": 0}

    def failing(x):
        calls["n"] += 1
        if calls["n"] == 3:  # during step 3 (fused: one normalisation per step)
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has 1.00 GiB free."
            )
        return normalize(x)

    saved = []
    with pytest.raises(
        AdaptationStopped,
        match=(
            r"^out of memory on cpu at AdaMerging step 3 \(fused\); stopped, keeping the state of"
            r" step 2$"
        ),
    ) as stop:
        adamerge(merged(), data, failing, _config(steps=5), "layer-wise", save_state=saved.append)
    # a quarter of 2 x 8 images
    assert stop.value.advice == "rerun with --adapt-mode chunked --adapt-chunk 4 and --resume"
    assert saved[-1]["step"] == 2 and saved[-1]["raw"].device.type == "cpu"
    resumed = adamerge(
        merged(),
        data,
        normalize,
        _config(steps=5, adapt_mode="chunked", adapt_chunk=4),
        "layer-wise",
        resume=saved[-1],
    )
    torch.testing.assert_close(resumed.table.lambdas, full.table.lambdas, rtol=0, atol=1e-6)
    # out of memory in the very first step: nothing of this run finished, nothing saved, the setting
    # named
    calls["n"] = 2
    saved.clear()
    with pytest.raises(
        AdaptationStopped,
        match=(
            r"step 1 \(fused\); stopped, nothing saved: rerun with --adapt-mode chunked"
            r" --adapt-chunk 4$"
        ),
    ):
        adamerge(
            merged(),
            data,
            failing,
            _config(steps=5, eval_every=0),
            "layer-wise",
            save_state=saved.append,
        )
    assert saved == []


def test_out_of_memory_through_the_scripts_is_one_line_exit_3_and_resumable(
    mini, monkeypatch, capsys
):
    original, calls = adaptation.task_loss, {"n": 0}

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 7:  # step 3 of 3 tasks
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB.")
        return original(*args)

    monkeypatch.setattr(adaptation, "task_loss", failing)
    argv = _argv(mini, "--steps", "5", "--lr", "0.05", "--save-every", "0")
    with pytest.raises(SystemExit) as e:
        pipeline.main("task_wise_adamerging", argv)
    err = capsys.readouterr().err
    assert e.value.code == EXIT_STOPPED and "Traceback" not in err and err.count("\n") == 1
    assert (
        "out of memory on cpu at AdaMerging step 3 (fused); stopped, keeping the state of step 2;"
        " saved to" in err
    )
    # 3 tasks x 32 images / 4
    assert err.rstrip().endswith("rerun with --adapt-mode chunked --adapt-chunk 24 and --resume")
    monkeypatch.setattr(adaptation, "task_loss", original)
    resumed = run(
        "task_wise_adamerging",
        argv + ["--resume", "--adapt-mode", "chunked", "--adapt-chunk", "24"],
    )
    full = run("task_wise_adamerging", argv)
    assert (
        resumed["adaptation"]["adapt_mode"] == "chunked, 24 images per chunk"
        and full["adaptation"]["adapt_mode"] == "fused"
    )
    torch.testing.assert_close(
        torch.tensor(resumed["coefficients"]["values"]),
        torch.tensor(full["coefficients"]["values"]),
        rtol=0,
        atol=1e-6,
    )
    # out of memory outside a step (here: evaluating a fixed table): one line, exit 3, the setting
    # named
    monkeypatch.setattr(
        job_module,
        "evaluate_accuracy",
        lambda *a: _raise(
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB. More text")
        ),
    )
    with pytest.raises(SystemExit) as e:
        pipeline.main("task_arithmetic", _argv(mini))
    err = capsys.readouterr().err
    assert e.value.code == EXIT_STOPPED and "Traceback" not in err
    assert (
        err == "error: out of memory (CUDA out of memory. Tried to allocate 3.00 GiB): lower"
        " --batch-size (the evaluation batch), or merge fewer tasks per run (--tasks)\n"
    )


def _one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_a_gpu_index_past_the_device_count_and_more_ranks_than_gpus_are_one_line_errors(
    monkeypatch,
):
    _one_gpu(monkeypatch)
    device_mod.check_device("cuda:0")
    device_mod.check_device("cuda")
    with pytest.raises(
        ValueError,
        match=(
            r"^--device cuda:7: this machine has 1 CUDA device \(cuda:0 to cuda:0\); use one of"
            r" those, or --device cuda$"
        ),
    ):
        device_mod.check_device("cuda:7")
    for key, value in {
        "WORLD_SIZE": "2",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "2",
    }.items():
        monkeypatch.setenv(key, value)
    # rank 0 fits on GPU 0 but refuses too: every rank stops at once, none waits for the others
    with pytest.raises(
        ValueError,
        match=(
            r"^torchrun started 2 processes on this node, which has 1 CUDA device \(one per"
            r" process\): "
            r"use --nproc_per_node 1 or fewer, or --device cpu \(gloo\)$"
        ),
    ):
        distributed.init_from_env("cuda")


@pytest.mark.parametrize("entry", ["method script", "diagnose", "experiments"])
def test_every_entry_point_checks_the_device_before_loading_anything(
    monkeypatch, capsys, tmp_path, entry
):
    from adamerging.commands.diagnose import main as diagnose_main
    from adamerging.commands.experiments import main as experiments_main

    _one_gpu(monkeypatch)
    monkeypatch.setattr(
        pipeline, "load_problem", lambda *a, **k: pytest.fail("loaded before checking the device")
    )
    argv = ["--model", "mini", "--checkpoints", str(tmp_path / "nothing"), "--device", "cuda:3"]
    command = {
        "method script": lambda: pipeline.main("task_arithmetic", argv),
        "diagnose": lambda: diagnose_main(argv),
        "experiments": lambda: experiments_main(["entropy-loss", *argv]),
    }[entry]
    with pytest.raises(SystemExit) as e:
        command()
    err = capsys.readouterr().err
    assert e.value.code == EXIT_USER_ERROR
    assert (
        err
        == "error: --device cuda:3: this machine has 1 CUDA device (cuda:0 to cuda:0); use one of"
        " those, or --device cuda\n"
    )


def test_the_scripts_leave_the_process_group_at_exit(monkeypatch):
    left = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: left.append(1))
    run_cli(lambda argv: None, [])
    with pytest.raises(SystemExit):
        run_cli(lambda argv: _raise(ValueError("bad")), [])
    assert left == [1, 1]


def _raise(error: BaseException):
    raise error


class _FirstOfTwoRanks(Ranks):
    """Rank 0 of 2, alone in this process: the other rank's results (for tasks `others`) arrive as
    NaN."""

    def __init__(self, others):
        super().__init__(0, 2)
        object.__setattr__(self, "others", others)

    def merge_dicts(self, part):
        return {**part, **{k: float("nan") for k in self.others}}


def test_individual_evaluation_runs_each_expert_only_on_the_rank_that_owns_its_task(
    mini, monkeypatch
):
    ranks = _FirstOfTwoRanks(["SVHN"])  # task 1 of MNIST, SVHN, EuroSAT: rank 1's
    evaluated = []
    real = job_module.evaluate_accuracy
    monkeypatch.setattr(
        job_module,
        "evaluate_accuracy",
        lambda encoder, head, images, *a: (
            evaluated.append(len(images)) or real(encoder, head, images, *a)
        ),
    )
    monkeypatch.setattr(
        pipeline, "setup", lambda device, precision: (ranks, device, device_mod.numerics(precision))
    )
    # rank 0 evaluated MNIST and EuroSAT only; SVHN came from rank 1
    with pytest.raises(ValueError, match="SVHN is NaN/inf"):
        run("individual", _argv(mini))
    assert len(evaluated) == 2


def test_fp32_sets_ieee_flags_explicitly_tf32_needs_cuda_and_the_merge_stays_ieee(
    mini, monkeypatch
):
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    try:
        # PyTorch's own default: TF32 convolutions
        torch.backends.cudnn.allow_tf32 = True
        assert device_mod.set_precision("fp32", "cpu") == {
            "precision": "fp32",
            "cuda_matmul_allow_tf32": False,
            "cudnn_allow_tf32": False,
            "float32_matmul_precision": "highest",
        }
        with pytest.raises(ValueError, match="--precision tf32 needs a CUDA device"):
            device_mod.set_precision("tf32", "cpu")
        # the flags only; no GPU needed to set them
        assert device_mod.set_precision("tf32", "cuda")["cudnn_allow_tf32"] is True
        seen = []
        import adamerging.merging.encoder as me

        for name in ("merge_entry", "merge_entry_lambdas_grad"):
            real = getattr(me, name)
            monkeypatch.setattr(
                me,
                name,
                functools.partial(
                    lambda real, *a: (
                        seen.append(
                            (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
                        )
                        or real(*a)
                    ),
                    real,
                ),
            )
        clip, theta0, tau, entries, data, normalize = _problem()
        adamerge(
            MergedEncoder(clip.visual, theta0, tau, entries, "cpu"),
            data,
            normalize,
            _config(steps=1),
            "layer-wise",
        )
        # the merge and the contraction ran in IEEE fp32
        assert seen and set(seen) == {(False, False)}
        # and the mode is back after them
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])
    result = run("task_arithmetic", _argv(mini))
    assert result["numerics"] == {
        "precision": "fp32",
        "cuda_matmul_allow_tf32": False,
        "cudnn_allow_tf32": False,
        "float32_matmul_precision": "highest",
    }
    assert (
        json.loads((mini / "results" / "mini" / "task_arithmetic.json").read_text())["numerics"]
        == result["numerics"]
    )


def test_prefetched_images_give_the_same_run_as_resident_ones_and_are_used(monkeypatch):
    problem = _problem(images=48)
    clip, theta0, tau, entries, data, normalize = problem
    resident = adamerge(
        MergedEncoder(clip.visual, theta0, tau, entries, "cpu"),
        data,
        normalize,
        _config(steps=4),
        "layer-wise",
    )
    staged = []
    real_stage = adaptation.Feed._stage
    monkeypatch.setattr(
        adaptation.Feed,
        "_stage",
        lambda self, i, index: staged.append(i) or real_stage(self, i, index),
    )
    monkeypatch.setattr(adaptation, "Feed", functools.partial(adaptation.Feed, resident=False))
    streamed = adamerge(
        MergedEncoder(clip.visual, theta0, tau, entries, "cpu"),
        data,
        normalize,
        _config(steps=4),
        "layer-wise",
    )
    assert torch.equal(streamed.table.lambdas, resident.table.lambdas)
    assert [r["loss"] for r in streamed.trajectory] == [r["loss"] for r in resident.trajectory]
    # step 1's two tasks, then each step prefetches the next: none gathered twice
    assert len(staged) == 2 + 2 * 4


def test_theta0_is_held_once_and_the_callers_host_copies_are_replaced():
    clip, theta0, tau, entries, _, _ = _problem()
    merged = MergedEncoder(clip.visual, theta0, tau, entries, "cpu")
    params = dict(merged.visual.named_parameters())
    for name, tensor in merged.theta0.items():
        # the module's own weights are theta_0's
        assert params[name].data_ptr() == tensor.data_ptr()
        assert (
            theta0["model.visual." + name] is tensor
            and tau["model.visual." + name] is merged.tau[name]
        )


def test_evaluation_on_the_device_gives_the_logits_accuracy():
    clip, theta0, tau, entries, data, normalize = _problem(images=40)
    merged = MergedEncoder(clip.visual, theta0, tau, entries, "cpu")
    encoder = merged.encoder(torch.full((1, 2), 0.3))
    for t in data:
        logits = predict(encoder, t.head, t.images, normalize, 16)
        assert logits.shape == (40, t.head.num_classes)
        assert evaluate_accuracy(encoder, t.head, t.images, t.labels, normalize, 16) == accuracy(
            logits, t.labels
        )


def test_compiled_and_eager_steps_give_the_same_lambdas_gradients():
    torch._dynamo.reset()
    problem = _problem(images=16)
    clip, theta0, tau, entries, data, normalize = problem
    raw = 0.3 + 0.2 * torch.rand(len(entries), 2, generator=torch.Generator().manual_seed(1))
    runs = {}
    for compiled in (False, True):
        merged = MergedEncoder(clip.visual, theta0, tau, entries, "cpu", compile=compiled)
        lambdas = Lambdas(len(entries), 2, raw)
        config = _config(compile=compiled)
        run_ = AdaMerging(
            merged,
            lambdas,
            torch.optim.Adam(lambdas.parameters(), lr=0.02),
            data,
            normalize,
            config,
            torch.Generator().manual_seed(0),
            plan=plan_for(config, merged.device),
        )
        grads = []
        for _ in range(3):
            adamerging_step(run_)
            grads.append(lambdas.raw.grad.clone())
        runs[compiled] = grads
    for eager, compiled in zip(runs[False], runs[True]):
        assert _relative(compiled, eager) <= 1e-5
