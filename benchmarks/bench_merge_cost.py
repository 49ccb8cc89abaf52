"""Process CPU time of the AdaMerging merge alone (forward and coefficient-gradient backward), with
and without the pretrained coefficient c[0] multiplying theta_0.

    python benchmarks/bench_merge_cost.py --model ViT-B-32 --tasks 2 --repeats 3

The visual entries of the model with random theta_0, task vectors and upstream gradient dL/dtheta;
the merge is written as `adaptation.MergedEncoder.params` writes it (one tensordot per entry), so
the two rows show what the multiply by c[0] (always 1) and its gradient cost. Not part of the tests.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from adamerging.models import VISUAL_PREFIX, create_clip, encoder_state_dict  # noqa: E402


def merge_cost(theta0: dict, tau: dict, upstream: dict, num_tasks: int, scale_theta0: bool) -> tuple[float, float]:
    """(forward, backward) process CPU seconds of one merge of every entry and its coefficient gradients."""
    raw = torch.full((len(theta0), num_tasks + 1), 0.3, requires_grad=True)
    task = raw[:, 1:].clamp(0, 1)
    pretrained = raw[:, :1] * 0 + 1  # a coefficient that is 1 but carries a gradient, as the table's column 0
    t0 = time.process_time()
    merged = {}
    for j, key in enumerate(theta0):
        mixed = torch.tensordot(task[j], tau[key], dims=1)
        merged[key] = (pretrained[j, 0] * theta0[key] if scale_theta0 else theta0[key]) + mixed
    t1 = time.process_time()
    loss = sum((merged[key] * upstream[key]).sum() for key in theta0)
    t2 = time.process_time()
    loss.backward()
    return t1 - t0, time.process_time() - t2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ViT-B-32", choices=["mini", "ViT-B-32", "ViT-B-16", "ViT-L-14"])
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    shapes = {k: v.shape for k, v in encoder_state_dict(create_clip(args.model, device="meta")).items() if k.startswith(VISUAL_PREFIX)}
    theta0 = {k: torch.randn(s) for k, s in shapes.items()}
    tau = {k: 0.01 * torch.randn((args.tasks, *s)) for k, s in shapes.items()}
    upstream = {k: torch.randn(s) for k, s in shapes.items()}
    for _ in range(args.repeats):
        for label, scale in (("c[0] * theta_0 + sum_t c[t] tau_t", True), ("theta_0 + sum_t c[t] tau_t", False)):
            forward, backward = merge_cost(theta0, tau, upstream, args.tasks, scale)
            print(f"{label:34s} forward {forward * 1e3:6.0f} ms  backward {backward * 1e3:6.0f} ms (process CPU)", flush=True)


if __name__ == "__main__":
    main()
