"""Process CPU time of the AdaMerging merge alone: forward (theta(lambdas) for every visual entry)
and backward (the gradient of the lambdas from an upstream dL/dtheta), as the engine does it and as
it was.

    python benchmarks/bench_merge_cost.py --model ViT-B-32 --tasks 2 --repeats 3

Random theta_0, task vectors and dL/dtheta on the model's visual entries; a layer-wise lambdas table
(`adaptation.Lambdas`, clamped in the forward as in a step). Rows:
- engine: `task_vectors.merge_entry`, what `MergedEncoder.params` calls once per step;
- tensordot + add: theta_0 + tensordot(lambdas_j, tau_j), the formula before the in-place add (one
  more full-size temporary per entry, which on the CPU is mostly page faults of fresh memory);
- c[0] * theta_0 + ...: the pre-redesign formula with the pretrained coefficient (always 1) in the
  graph.
Each row also checks that its merged parameters and lambdas gradient equal the engine's bit for bit
(the last two columns). Not part of the test suite (tests/test_benchmarks.py runs it on `mini`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

# first: its THP_MEM_ALLOC_ENABLE default must precede torch, as in the scripts
import adamerging  # noqa: E402,F401
from adamerging.merging.task_vectors import merge_entry  # noqa: E402
from adamerging.methods.adamerging import Lambdas  # noqa: E402
from adamerging.models.clip import VISUAL_PREFIX, create_clip, encoder_state_dict  # noqa: E402

# (theta0_j, lambdas_j, tau_j) -> theta_j
Merge = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

VARIANTS: dict[str, Merge] = {
    "engine: task_vectors.merge_entry": merge_entry,
    "tensordot + add (before)": lambda theta0, lam, tau: theta0 + torch.tensordot(lam, tau, dims=1),
    "c[0] * theta_0 + ... (pre-redesign)": lambda theta0, lam, tau: (
        (lam.sum() * 0 + 1) * theta0 + torch.tensordot(lam, tau, dims=1)
    ),
}


def merge_cost(
    theta0: dict, tau: dict, upstream: dict, num_tasks: int, merge: Merge
) -> tuple[float, float, dict, torch.Tensor]:
    """(forward s, backward s) of process CPU time, the merged parameters and the lambdas gradient
    [entries, T]."""
    lambdas = Lambdas(len(theta0), num_tasks, 0.3)
    t0 = time.process_time()
    table = lambdas()
    merged = {key: merge(theta0[key], table[j], tau[key]) for j, key in enumerate(theta0)}
    t1 = time.process_time()
    torch.autograd.backward([merged[k] for k in theta0], [upstream[k] for k in theta0])
    t2 = time.process_time()
    return t1 - t0, t2 - t1, {k: v.detach() for k, v in merged.items()}, lambdas.raw.grad


def main(argv: list[str] | None = None) -> list[dict]:
    """Print one line per variant and repeat; return the rows (ms, and bit-identity to the
    engine)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", default="ViT-B-32", choices=["mini", "ViT-B-32", "ViT-B-16", "ViT-L-14"]
    )
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    shapes = {
        k: v.shape
        for k, v in encoder_state_dict(create_clip(args.model, device="meta")).items()
        if k.startswith(VISUAL_PREFIX)
    }
    theta0 = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    tau = {k: 0.01 * torch.randn((args.tasks, *s), generator=g) for k, s in shapes.items()}
    upstream = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    rows = []
    reference = None
    for _ in range(args.repeats):
        for label, merge in VARIANTS.items():
            forward, backward, merged, grad = merge_cost(theta0, tau, upstream, args.tasks, merge)
            reference = reference or (merged, grad)
            same = (
                all(torch.equal(merged[k], reference[0][k]) for k in merged),
                torch.equal(grad, reference[1]),
            )
            del merged
            rows.append(
                {
                    "variant": label,
                    "forward_ms": forward * 1e3,
                    "backward_ms": backward * 1e3,
                    "same_params": same[0],
                    "same_grad": same[1],
                }
            )
            print(
                f"{label:38s} forward {forward * 1e3:6.0f} ms  backward {backward * 1e3:6.0f} ms"
                f" (process CPU)  bit-identical params {same[0]}, lambdas gradient {same[1]}",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()
