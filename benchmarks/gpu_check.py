"""One call on one GPU (at most ~8 minutes): is this repo right, lean and fast there? Random
weights, no downloads.

    # on a CUDA machine
    PYTHONPATH=src python3 benchmarks/gpu_check.py --out DIR
    # the same sections on the CPU, `mini`
    PYTHONPATH=src python3 benchmarks/gpu_check.py --out DIR --dry-run

Sections, each written to DIR/gpu_check.json as soon as it finishes (a time-out keeps what
finished; a failing section records its error and the next one runs):
- environment: GPU, torch / CUDA / cuDNN / open_clip versions, the TF32 flags PyTorch starts with
  and the ones `--precision fp32` sets;
- correctness: one step on identical inputs (ViT-B/32, 8 tasks x 4 images), GPU against CPU in IEEE
  fp32 (loss within 1e-5 relative, lambdas-gradient cosine >= 0.99999), chunked = fused, activation
  checkpointing = none, and tf32 / bf16 against fp32 within the bounds in BOUNDS;
- speed: the engine's step against the bare forward + backward floor (ViT-B/32, 8 x 32 images) in
  fp32, tf32 and bf16 (benchmarks/bench_adamerging.py's timers), and a short torch.profiler summary;
- evaluation: images per second of the evaluation loop (ViT-B/32, batch 128, host images);
- memory: ViT-L/14 x 8 tasks x 32 images, peak allocated memory and step time per adapt mode (auto,
  chunked, per-task, fused, fused + checkpointing, auto in bf16); fused is expected to run out of
  memory on an 80 GB card, and then shows the one-line stop a user gets;
- compile: `--compile` against eager, lambdas gradients over 3 steps and step times.
Needs torch, numpy and open_clip (+ ftfy, wcwidth); see benchmarks/README.md for the wheels to
carry.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from adamerging.merging.encoder import MergedEncoder  # noqa: E402
from adamerging.methods.adamerging import (  # noqa: E402
    AdaMerging,
    Lambdas,
    adamerge,
    adamerging_step,
)
from adamerging.methods.loop import AdaptationStopped  # noqa: E402
from adamerging.methods.plan import plan_for  # noqa: E402
from adamerging.models.evaluation import Normalizer, evaluate_accuracy  # noqa: E402
from adamerging.run.config import RunConfig  # noqa: E402
from adamerging.run.problem import TaskData  # noqa: E402
from adamerging.runtime.device import numerics, set_precision  # noqa: E402

# Acceptance bounds of the correctness section (relative loss difference, minimum gradient cosine)
BOUNDS = {
    "fp32_vs_cpu": (1e-5, 0.99999),
    "chunked_vs_fused": (1e-5, 0.99999),
    "checkpointing_vs_none": (1e-5, 0.99999),
    "tf32_vs_fp32": (1e-2, 0.999),
    "bf16_vs_fp32": (3e-2, 0.99),
}


def _bench():
    """benchmarks/bench_adamerging.py as a module (its problem builder and step / floor timers)."""
    spec = importlib.util.spec_from_file_location(
        "bench_adamerging", Path(__file__).with_name("bench_adamerging.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(model: str, tasks: int, images: int, device: torch.device):
    """bench_adamerging's random problem (theta_0, task vectors, uint8 images, heads on
    `device`)."""
    args = argparse.Namespace(model=model, tasks=tasks, images=images)
    return _bench().build(args, device)


def step_gradient(
    problem, device: torch.device, images: int, raw: torch.Tensor, **settings
) -> tuple[float, torch.Tensor]:
    """Loss and lambdas gradient (on the CPU) of one step on `device` from `raw`: the first `images`
    of each task (2 batches), sampler seed 0. The problem's dicts are copied: MergedEncoder moves
    their tensors."""
    clip, theta0, tau, keys, data, normalize = problem
    config = RunConfig(
        device=str(device),
        batch_size_adapt=images // 2,
        batches_per_step=2,
        no_progress=True,
        save_every=0,
        **settings,
    )
    set_precision(config.precision, device)
    merged = MergedEncoder(
        clip.visual,
        dict(theta0),
        dict(tau),
        keys,
        device,
        checkpointing=config.checkpointing,
        compile=config.compile,
    )
    heads = [TaskData(t.name, t.images[:images], t.head.to(device), t.labels) for t in data]
    lambdas = Lambdas(len(keys), len(data), raw).to(device)
    run = AdaMerging(
        merged,
        lambdas,
        torch.optim.SGD(lambdas.parameters(), lr=0.0),
        heads,
        Normalizer(normalize.mean.flatten().tolist(), normalize.std.flatten().tolist(), device),
        config,
        torch.Generator().manual_seed(0),
        plan=plan_for(config, merged.device),
    )
    loss = adamerging_step(run)
    return loss, lambdas.raw.grad.detach().cpu().clone()


def compare(
    a: tuple[float, torch.Tensor], b: tuple[float, torch.Tensor], bound: tuple[float, float]
) -> dict:
    loss_rel = abs(a[0] - b[0]) / max(abs(b[0]), 1e-30)
    cosine = float(
        torch.nn.functional.cosine_similarity(
            a[1].flatten().double(), b[1].flatten().double(), dim=0
        )
    )
    return {
        "loss_rel_diff": loss_rel,
        "grad_cosine": cosine,
        "grad_rel_diff": float((a[1] - b[1]).norm() / b[1].norm().clamp_min(1e-30)),
        "bounds": {"loss_rel_diff_max": bound[0], "grad_cosine_min": bound[1]},
        "ok": loss_rel <= bound[0] and cosine >= bound[1],
    }


# sections -----------------------------------------------------------------------------------------


def environment(ctx, out: dict) -> None:
    import numpy
    import open_clip

    out.update(
        {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": (
                torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
            ),
            "open_clip": getattr(open_clip, "__version__", None),
            "numpy": numpy.__version__,
            "cpu_threads": torch.get_num_threads(),
            "flags_at_start": numerics("(PyTorch default)"),
            "device": str(ctx.device),
        }
    )
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        out.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gb=props.total_memory / 1e9,
            device_count=torch.cuda.device_count(),
        )
    out["flags_fp32"] = set_precision("fp32", ctx.device)


def correctness(ctx, out: dict) -> None:
    images = 4
    problem = build(ctx.small, 8, images, torch.device("cpu"))
    raw = 0.2 + 0.3 * torch.rand(len(problem[3]), 8, generator=torch.Generator().manual_seed(1))
    cpu = torch.device("cpu")
    fused = step_gradient(problem, ctx.device, images, raw, adapt_mode="fused")
    reference = (
        step_gradient(problem, cpu, images, raw, adapt_mode="fused")
        if ctx.device.type == "cuda"
        else fused
    )
    out.update(
        {
            "model": ctx.small,
            "tasks_x_images": f"8 x {images}",
            "fp32_vs_cpu": compare(fused, reference, BOUNDS["fp32_vs_cpu"]),
            "chunked_vs_fused": compare(
                step_gradient(
                    problem, ctx.device, images, raw, adapt_mode="chunked", adapt_chunk=5
                ),
                fused,
                BOUNDS["chunked_vs_fused"],
            ),
            "checkpointing_vs_none": compare(
                step_gradient(
                    problem, ctx.device, images, raw, adapt_mode="fused", checkpointing=True
                ),
                fused,
                BOUNDS["checkpointing_vs_none"],
            ),
            "bf16_vs_fp32": compare(
                step_gradient(
                    problem, ctx.device, images, raw, adapt_mode="fused", precision="bf16"
                ),
                fused,
                BOUNDS["bf16_vs_fp32"],
            ),
        }
    )
    if ctx.device.type == "cuda":
        out["tf32_vs_fp32"] = compare(
            step_gradient(problem, ctx.device, images, raw, adapt_mode="fused", precision="tf32"),
            fused,
            BOUNDS["tf32_vs_fp32"],
        )
    set_precision("fp32", ctx.device)
    out["ok"] = all(v["ok"] for v in out.values() if isinstance(v, dict))


def _precisions(ctx) -> list[str]:
    return ["fp32", "tf32", "bf16"] if ctx.device.type == "cuda" else ["fp32", "bf16"]


def speed(ctx, out: dict) -> None:
    bench = _bench()
    tasks, images = 8, ctx.speed_images
    problem = bench.build(
        argparse.Namespace(model=ctx.small, tasks=tasks, images=images), ctx.device
    )
    clip, theta0, tau, keys, data, normalize = problem
    out.update({"model": ctx.small, "tasks_x_images": f"{tasks} x {images}", "rows": {}})
    for precision in _precisions(ctx):
        set_precision(precision, ctx.device)
        args = argparse.Namespace(
            model=ctx.small,
            tasks=tasks,
            images=images,
            precision=precision,
            adapt_mode="auto",
            checkpointing=False,
            compile=False,
            steps=ctx.steps,
            warmup=ctx.warmup,
        )
        ours = bench.time_ours(
            args, ctx.device, clip, dict(theta0), dict(tau), keys, data, normalize
        )
        floor = bench.time_floor(args, ctx.device, clip, data, normalize)
        out["rows"][precision] = {
            **{
                k: ours[k]
                for k in (
                    "full_step_s",
                    "merge_s",
                    "forward_s",
                    "backward_s",
                    "optimizer_s",
                    "peak_mb",
                )
            },
            "floor_s": floor,
            "step_over_floor": ours["full_step_s"] / floor,
            "images_per_s": tasks * images / ours["full_step_s"],
        }
        ctx.save()
    set_precision("fp32", ctx.device)
    out["profile_fp32"] = profile(ctx, problem, tasks, images)


def profile(ctx, problem, tasks: int, images: int, rows: int = 12) -> list[dict]:
    """The ops that take the most time over 2 engine steps (fp32), from torch.profiler."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    clip, theta0, tau, keys, data, normalize = problem
    merged = MergedEncoder(clip.visual, dict(theta0), dict(tau), keys, ctx.device)
    config = RunConfig(
        steps=2,
        batch_size_adapt=images // 2,
        batches_per_step=2,
        device=str(ctx.device),
        no_progress=True,
        save_every=0,
    )
    adamerge(merged, data, normalize, config, "layer-wise")  # warm-up
    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if ctx.device.type == "cuda" else []
    )
    with torch_profile(activities=activities) as prof:
        adamerge(merged, data, normalize, config, "layer-wise")
        sync(ctx.device)
    events = list(prof.key_averages())

    def device_us(e) -> float:
        return float(
            getattr(e, "self_device_time_total", None)
            or getattr(e, "self_cuda_time_total", 0.0)
            or 0.0
        )

    key = device_us if ctx.device.type == "cuda" else (lambda e: float(e.self_cpu_time_total))
    return [
        {
            "op": e.key,
            "calls": e.count,
            "self_device_ms": device_us(e) / 1e3,
            "self_cpu_ms": e.self_cpu_time_total / 1e3,
        }
        for e in sorted(events, key=key, reverse=True)[:rows]
    ]


def evaluation(ctx, out: dict) -> None:
    problem = build(ctx.small, 1, 2, ctx.device)
    clip, theta0, tau, keys, data, normalize = problem
    size = (
        clip.visual.image_size[0]
        if isinstance(clip.visual.image_size, (tuple, list))
        else clip.visual.image_size
    )
    images = torch.randint(0, 256, (ctx.eval_images, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, data[0].head.num_classes, (ctx.eval_images,))
    merged = MergedEncoder(clip.visual, dict(theta0), dict(tau), keys, ctx.device)
    out.update(
        {
            "model": ctx.small,
            "images": ctx.eval_images,
            "batch_size": 128,
            "source": "host uint8 images",
            "rows": {},
        }
    )
    for precision in _precisions(ctx):
        set_precision(precision, ctx.device)
        encoder = merged.encoder(torch.full((1, 1), 0.3), precision)
        # warm-up
        evaluate_accuracy(encoder, data[0].head, images[:256], labels[:256], normalize, 128)
        sync(ctx.device)
        t0 = time.perf_counter()
        evaluate_accuracy(encoder, data[0].head, images, labels, normalize, 128)
        sync(ctx.device)
        seconds = time.perf_counter() - t0
        out["rows"][precision] = {"seconds": seconds, "images_per_s": ctx.eval_images / seconds}
        ctx.save()
    set_precision("fp32", ctx.device)


def memory(ctx, out: dict) -> None:
    tasks, images = 8, ctx.memory_images
    problem = build(ctx.large, tasks, images, ctx.device)
    clip, theta0, tau, keys, data, normalize = problem
    out.update(
        {
            "model": ctx.large,
            "tasks_x_images": f"{tasks} x {images}",
            "precision": "fp32 unless named",
            "rows": {},
        }
    )
    modes = [
        ("auto", {}),
        ("chunked, 32", {"adapt_mode": "chunked", "adapt_chunk": 32}),
        ("per-task", {"adapt_mode": "per-task"}),
        ("fused", {"adapt_mode": "fused"}),
        ("fused + checkpointing", {"adapt_mode": "fused", "checkpointing": True}),
        ("auto, bf16", {"precision": "bf16"}),
    ]
    for name, settings in modes:
        # the same dicts every time: the first MergedEncoder moves theta_0 and tau there, the others
        # share them
        merged = MergedEncoder(
            clip.visual,
            theta0,
            tau,
            keys,
            ctx.device,
            checkpointing=settings.get("checkpointing", False),
        )
        config = RunConfig(
            steps=ctx.memory_steps,
            batch_size_adapt=images // 2,
            batches_per_step=2,
            device=str(ctx.device),
            no_progress=True,
            save_every=0,
            **settings,
        )
        set_precision(config.precision, ctx.device)
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(ctx.device)
        t0 = time.perf_counter()
        try:
            result = adamerge(merged, data, normalize, config, "layer-wise")
            row = {
                "plan": result.plan,
                "step_s_median": result.step_seconds,
                "steps": ctx.memory_steps,
            }
        except AdaptationStopped as stop:  # out of memory: the one line a user gets
            row = {"stopped": str(stop), "advice": stop.advice}
        row["seconds"] = time.perf_counter() - t0
        if ctx.device.type == "cuda":
            row["peak_allocated_gb"] = torch.cuda.max_memory_allocated(ctx.device) / 1e9
            row["peak_reserved_gb"] = torch.cuda.max_memory_reserved(ctx.device) / 1e9
        out["rows"][name] = row
        del merged
        ctx.save()
    set_precision("fp32", ctx.device)
    if ctx.device.type == "cuda":
        out["device_total_gb"] = torch.cuda.get_device_properties(ctx.device).total_memory / 1e9


def compile_check(ctx, out: dict) -> None:
    torch._dynamo.reset()
    images = 4
    problem = build(ctx.small, 8, images, torch.device("cpu"))
    raw = 0.2 + 0.3 * torch.rand(len(problem[3]), 8, generator=torch.Generator().manual_seed(2))
    out.update({"model": ctx.small, "tasks_x_images": f"8 x {images}", "rows": {}})
    grads = {}
    for compiled in (False, True):
        t0 = time.perf_counter()
        clip, theta0, tau, keys, data, normalize = problem
        merged = MergedEncoder(
            clip.visual, dict(theta0), dict(tau), keys, ctx.device, compile=compiled
        )
        config = RunConfig(
            device=str(ctx.device),
            batch_size_adapt=images // 2,
            batches_per_step=2,
            no_progress=True,
            save_every=0,
            compile=compiled,
            lr=0.01,
        )
        heads = [TaskData(t.name, t.images[:images], t.head.to(ctx.device), t.labels) for t in data]
        lambdas = Lambdas(len(keys), 8, raw).to(ctx.device)
        run = AdaMerging(
            merged,
            lambdas,
            torch.optim.Adam(lambdas.parameters(), lr=0.01),
            heads,
            Normalizer(
                normalize.mean.flatten().tolist(), normalize.std.flatten().tolist(), ctx.device
            ),
            config,
            torch.Generator().manual_seed(0),
            plan=plan_for(config, merged.device),
        )
        times, grads[compiled] = [], []
        for _ in range(3):
            sync(ctx.device)
            s0 = time.perf_counter()
            adamerging_step(run)
            sync(ctx.device)
            times.append(time.perf_counter() - s0)
            grads[compiled].append(lambdas.raw.grad.detach().cpu().clone())
        out["rows"]["compiled" if compiled else "eager"] = {
            "first_step_s": times[0],
            "later_steps_s": statistics.median(times[1:]),
            "total_s": time.perf_counter() - t0,
        }
        ctx.save()
    rel = [float((c - e).norm() / e.norm()) for e, c in zip(grads[False], grads[True])]
    out.update(grad_rel_diff_per_step=rel, ok=max(rel) <= 1e-5)


SECTIONS: dict[str, Callable] = {
    "environment": environment,
    "correctness": correctness,
    "speed": speed,
    "evaluation": evaluation,
    "memory": memory,
    "compile": compile_check,
}
# Rough cost on an H100 (s): a section is skipped when less time than this is left in --budget-s
ESTIMATE_S = {
    "environment": 5,
    "correctness": 40,
    "speed": 90,
    "evaluation": 30,
    "memory": 150,
    "compile": 120,
}


class Context:
    """The run's settings (GPU or dry run) and its JSON, rewritten after every section."""

    def __init__(self, args):
        self.dry = args.dry_run
        self.device = torch.device("cpu" if args.dry_run else args.device)
        self.small, self.large = ("mini", "mini") if args.dry_run else ("ViT-B-32", "ViT-L-14")
        # the dry run checks the code paths, not the numbers: small sizes (bf16 autocast is slow on
        # most CPUs)
        self.speed_images, self.memory_images = (4, 4) if args.dry_run else (32, 32)
        self.eval_images = 128 if args.dry_run else 4096
        self.steps, self.warmup, self.memory_steps = (1, 0, 1) if args.dry_run else (5, 2, 2)
        self.path = Path(args.out) / "gpu_check.json"
        self.report: dict = {
            "command": " ".join(sys.argv),
            "dry_run": self.dry,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "sections": {},
        }

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.report, indent=1, default=str))
        os.replace(tmp, self.path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="folder for gpu_check.json")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="the same sections on the CPU with the `mini` model (seconds to a minute)",
    )
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma-separated subset of " + ", ".join(SECTIONS),
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=450,
        help="skip a section when less than its estimated time is left",
    )
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run to check the script on the CPU")
    ctx = Context(args)
    started = time.perf_counter()
    for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
        left = args.budget_s - (time.perf_counter() - started)
        if not ctx.dry and left < ESTIMATE_S[name]:
            ctx.report["sections"][name] = {
                "skipped": f"{left:.0f} s left of --budget-s, about {ESTIMATE_S[name]} s needed"
            }
            ctx.save()
            continue
        t0 = time.perf_counter()
        out = ctx.report["sections"][name] = {}
        try:
            SECTIONS[name](ctx, out)
        # one section's failure must not lose the others (what it measured stays)
        except Exception as e:
            out.update(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
        out["section_s"] = time.perf_counter() - t0
        ctx.save()
        print(
            f"== {name} ({time.perf_counter() - t0:.1f}"
            f" s)\n{json.dumps(ctx.report['sections'][name], indent=1, default=str)[:3000]}",
            flush=True,
        )
    ctx.report["total_s"] = time.perf_counter() - started
    ctx.save()
    return ctx.report


if __name__ == "__main__":
    main()
