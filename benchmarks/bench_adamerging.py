"""Time one layer-wise AdaMerging step, its parts, the floor, and the original loop's structure.

    python benchmarks/bench_adamerging.py --model mini --device cpu
    python benchmarks/bench_adamerging.py --model ViT-B-32 --device cuda --precision bf16 \\
        --tasks 8 --images 32
    python benchmarks/bench_adamerging.py --model ViT-B-32 --tasks 2 --images 4 --steps 3 \\
        --interleave 8 --no-original

Random weights (no checkpoints). Reports medians over --steps after --warmup:
- ours: the engine's real step (`adaptation.adamerge`), and its parts measured on the same step
  structure: merge (parameters from theta_0 + table x task vectors), forward, backward, optimizer;
- floor: a bare forward + entropy + backward of the same batch through a plain model whose own
  parameters require grad (no merging, no sampling): what any implementation must pay;
- original: a re-creation of the authors' loop structure on a small in-memory image set: every step
  and task re-creates the dataset and a shuffled DataLoader (PIL images through the CLIP transform),
  and every forward merges all entries on the CPU and assigns them into the module;
- interleaved (--interleave N): engine and floor steps alternated, wall and process CPU time each.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

# first: its THP_MEM_ALLOC_ENABLE default must precede torch, as in the scripts
import adamerging  # noqa: E402,F401
from adamerging.merging.encoder import MergedEncoder  # noqa: E402
from adamerging.merging.task_vectors import zero_task_vectors  # noqa: E402
from adamerging.methods.adamerging import Lambdas, adamerge
from adamerging.models.clip import (  # noqa: E402
    VISUAL_PREFIX,
    create_clip,
    encoder_state_dict,
    image_size,
    normalization,
)
from adamerging.models.evaluation import Normalizer  # noqa: E402
from adamerging.models.heads import Head  # noqa: E402
from adamerging.models.objectives import softmax_entropy
from adamerging.run.config import RunConfig  # noqa: E402
from adamerging.run.problem import TaskData  # noqa: E402
from adamerging.runtime.device import autocast, set_precision


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build(args, device):
    torch.manual_seed(0)
    clip = create_clip(args.model)
    theta0 = {k: v.detach().clone() for k, v in encoder_state_dict(clip).items()}
    keys = list(theta0)
    # as loading builds them: random task vectors on the visual tower, zero views on the text side
    tau = {
        k: (
            0.01 * torch.randn((args.tasks, *v.shape))
            if k.startswith(VISUAL_PREFIX)
            else zero_task_vectors(args.tasks, v.shape)
        )
        for k, v in theta0.items()
    }
    size = image_size(clip)
    dim = clip.visual.output_dim
    pool = max(64, 2 * args.images)  # test images per task kept in memory
    data = [
        TaskData(
            f"T{i}",
            torch.randint(0, 256, (pool, 3, size, size), dtype=torch.uint8),
            Head(torch.nn.functional.normalize(torch.randn(10, dim), dim=1).to(device) * 100),
        )
        for i in range(args.tasks)
    ]
    mean, std = normalization(clip)
    return clip, theta0, tau, keys, data, Normalizer(mean, std, device)


def run_config(args, device, steps: int) -> RunConfig:
    """The engine's settings for `steps` steps of args.images images per task (2 batches of
    images/2)."""
    return RunConfig(
        steps=steps,
        batch_size_adapt=args.images // 2,
        batches_per_step=2,
        adapt_mode=args.adapt_mode,
        precision=args.precision,
        device=str(device),
        no_progress=True,
        save_every=0,
    )


def time_ours(args, device, clip, theta0, tau, keys, data, normalize) -> dict:
    merged = MergedEncoder(
        clip.visual,
        theta0,
        tau,
        keys,
        device,
        checkpointing=args.checkpointing,
        compile=args.compile,
    )
    config = lambda steps: run_config(args, device, steps)  # noqa: E731
    # warm-up (allocator, compile, caches)
    adamerge(merged, data, normalize, config(args.warmup), "layer-wise")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = adamerge(merged, data, normalize, config(args.steps), "layer-wise")
    out = {"full_step_s": result.step_seconds, "peak_mb": peak_memory_mb(device)}

    lambdas = Lambdas(len(keys), args.tasks, 0.3).to(device)
    optimizer = torch.optim.Adam(lambdas.parameters(), lr=1e-3)
    x = normalize(torch.cat([t.images[: args.images] for t in data]))
    parts = {"merge": [], "forward": [], "backward": [], "optimizer": []}
    for i in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        params = merged.params(lambdas())
        sync(device)
        t1 = time.perf_counter()
        with merged.bound(params):
            with autocast(device, args.precision):
                features = merged(params, x).split(args.images)
            loss = sum(softmax_entropy(t.head(f.float())).mean() for t, f in zip(data, features))
            sync(device)
            t2 = time.perf_counter()
            loss.backward()
        sync(device)
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        t4 = time.perf_counter()
        if i >= args.warmup:
            for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[name].append(dt)
    out.update({f"{k}_s": statistics.median(v) for k, v in parts.items()})
    return out


def _floor_model(args, device, clip):
    visual = clip.visual.to(device)
    visual.set_grad_checkpointing(args.checkpointing)
    for p in visual.parameters():
        p.requires_grad_(True)
    return visual


def _floor_step(args, device, visual, x, data) -> None:
    """A bare forward + entropy + backward through the plain model: the floor of any
    implementation."""
    with autocast(device, args.precision):
        features = visual(x).split(args.images)
    loss = sum(softmax_entropy(t.head(f.float())).mean() for t, f in zip(data, features))
    loss.backward()
    visual.zero_grad(set_to_none=True)
    sync(device)


def time_floor(args, device, clip, data, normalize) -> float:
    visual = _floor_model(args, device, clip)
    x = normalize(torch.cat([t.images[: args.images] for t in data]))
    times = []
    for i in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        _floor_step(args, device, visual, x, data)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    for p in visual.parameters():
        p.requires_grad_(False)
    return statistics.median(times)


def time_interleaved(args, device, clip, theta0, tau, keys, data, normalize) -> dict:
    """Engine step and floor step alternated in one process, each timed by wall clock and by process
    CPU time (which other jobs on the machine disturb far less). The engine step is a 1-step
    `adamerge` call (its set-up of a few microseconds per call included, so slightly pessimistic).
    """
    merged = MergedEncoder(
        clip.visual,
        theta0,
        tau,
        keys,
        device,
        checkpointing=args.checkpointing,
        compile=args.compile,
    )
    config = run_config(args, device, 1)
    # the module's own weights: unused by the engine's functional call
    visual = _floor_model(args, device, clip)
    x = normalize(torch.cat([t.images[: args.images] for t in data]))
    rows = {"engine_wall": [], "engine_cpu": [], "floor_wall": [], "floor_cpu": []}
    for i in range(args.warmup + args.interleave):
        for name, step in (
            ("engine", lambda: adamerge(merged, data, normalize, config, "layer-wise")),
            ("floor", lambda: _floor_step(args, device, visual, x, data)),
        ):
            sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            step()
            sync(device)
            if i >= args.warmup:
                rows[f"{name}_wall"].append(time.perf_counter() - w0)
                rows[f"{name}_cpu"].append(time.process_time() - c0)
    for p in visual.parameters():
        p.requires_grad_(False)
    out = {f"interleaved_{k}_s": statistics.median(v) for k, v in rows.items()}
    out["interleaved_pair_ratio_cpu"] = statistics.median(
        e / f for e, f in zip(rows["engine_cpu"], rows["floor_cpu"])
    )
    out["interleaved_pair_ratio_wall"] = statistics.median(
        e / f for e, f in zip(rows["engine_wall"], rows["floor_wall"])
    )
    return out


def time_original(args, device, clip, theta0, tau, keys, data, normalize) -> float:  # noqa: C901
    """The authors' loop structure: dataset + DataLoader re-created per step and task, CPU merge per
    forward."""
    import open_clip
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    from adamerging import _torchvision_compat  # noqa: F401

    size = image_size(clip)
    transform = open_clip.image_transform(size, is_train=False)
    pil = [[Image.fromarray(img.permute(1, 2, 0).numpy()) for img in t.images[:64]] for t in data]

    class Images(Dataset):  # what the original builds from disk every step, here from memory
        def __init__(self, images):
            self.images = images

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return transform(self.images[i]), 0

    model = create_clip(args.model).visual.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    visual_keys = [k for k in keys if k.startswith("model.visual.")]
    names = [k[len("model.visual.") :] for k in visual_keys]
    lambdas = torch.nn.Parameter(torch.full((len(keys), args.tasks), 0.3))
    optimizer = torch.optim.Adam([lambdas], lr=1e-3)

    def merge_and_assign():
        # the original: merge every entry on the CPU, then `del` + `setattr` into the module
        alph = lambdas.clamp(0, 1)
        for key, name in zip(visual_keys, names):
            row = keys.index(key)
            value = theta0[key] + (alph[row].view(-1, *[1] * theta0[key].dim()) * tau[key]).sum(0)
            *path, leaf = name.split(".")
            module = model
            for part in path:
                module = getattr(module, part)
            if leaf in module._parameters:
                del module._parameters[leaf]
            setattr(module, leaf, value.to(device))

    times = []
    for i in range(args.original_warmup + args.original_steps):
        sync(device)
        t0 = time.perf_counter()
        losses = 0.0
        for t, images in zip(data, pil):
            loader = DataLoader(
                Images(images), batch_size=args.images // 2, shuffle=True, num_workers=0
            )
            for b, (x, _) in enumerate(loader):
                merge_and_assign()
                features = model(x.to(device))
                losses = losses + softmax_entropy(t.head(features.float())).mean()
                if b > 0:
                    break
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        sync(device)
        if i >= args.original_warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="mini", choices=["mini", "ViT-B-32", "ViT-B-16", "ViT-L-14"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument(
        "--images", type=int, default=32, help="images per task per step (2 batches of images/2)"
    )
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    p.add_argument("--adapt-mode", default="auto", choices=["auto", "fused", "chunked", "per-task"])
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--original-steps", type=int, default=3)
    p.add_argument("--original-warmup", type=int, default=1)
    p.add_argument("--no-original", action="store_true")
    p.add_argument(
        "--interleave",
        type=int,
        default=0,
        help="also alternate N engine and floor steps, timing wall and process CPU time",
    )
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    set_precision(args.precision, device)
    clip, theta0, tau, keys, data, normalize = build(args, device)
    ours = time_ours(args, device, clip, theta0, tau, keys, data, normalize)
    floor = time_floor(args, device, clip, data, normalize)
    inter = (
        time_interleaved(args, device, clip, theta0, tau, keys, data, normalize)
        if args.interleave
        else {}
    )
    original = (
        None
        if args.no_original
        else time_original(args, device, clip, theta0, tau, keys, data, normalize)
    )
    images = args.tasks * args.images
    full = ours["full_step_s"]
    rows = [
        (
            "device",
            str(device)
            + (
                f" ({torch.cuda.get_device_name(device)})"
                if device.type == "cuda"
                else f" ({torch.get_num_threads()} threads)"
            ),
        ),
        (
            "model / tasks x images",
            (
                f"{args.model} / {args.tasks} x {args.images} ("
                + ", ".join(
                    [args.precision, args.adapt_mode]
                    + ["checkpointing"] * args.checkpointing
                    + ["compile"] * args.compile
                )
                + ")"
            ),
        ),
        ("full step (engine, median)", f"{full * 1e3:.1f} ms"),
        ("  merge", f"{ours['merge_s'] * 1e3:.1f} ms"),
        ("  forward", f"{ours['forward_s'] * 1e3:.1f} ms"),
        ("  backward", f"{ours['backward_s'] * 1e3:.1f} ms"),
        ("  optimizer", f"{ours['optimizer_s'] * 1e3:.2f} ms"),
        ("steps / s", f"{1 / full:.2f}"),
        ("images / s", f"{images / full:.0f}"),
        (
            "peak memory",
            (
                f"{ours['peak_mb']:.0f} MB"
                f" ({'cuda max allocated' if device.type == 'cuda' else 'process peak RSS'})"
            ),
        ),
        ("projected 500 steps", f"{500 * full:.1f} s"),
        ("floor: bare forward+backward", f"{floor * 1e3:.1f} ms"),
        ("full step / floor", f"{full / floor:.2f}x"),
    ]
    if inter:
        for clock in ("cpu", "wall"):
            e, f = inter[f"interleaved_engine_{clock}_s"], inter[f"interleaved_floor_{clock}_s"]
            rows += [
                (
                    f"interleaved x{args.interleave}, {clock} time",
                    (
                        f"engine {e * 1e3:.1f} ms, floor {f * 1e3:.1f} ms: {e / f:.2f}x (median of"
                        f" pair ratios {inter[f'interleaved_pair_ratio_{clock}']:.2f}x)"
                    ),
                )
            ]
    if original is not None:
        rows += [
            ("original-style step", f"{original * 1e3:.1f} ms"),
            ("original / ours", f"{original / full:.1f}x"),
            ("original projected 500 steps", f"{500 * original:.0f} s"),
        ]
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    numbers = {**vars(args), **ours, **inter, "floor_s": floor, "original_s": original}
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=1))
    return numbers


if __name__ == "__main__":
    main()
