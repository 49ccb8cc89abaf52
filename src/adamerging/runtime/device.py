"""The compute device: its checks (one-line errors), the numerics policy, its free memory,
out-of-memory errors.

Numerics (`--precision`): "fp32" is IEEE float32 for matmuls and convolutions, set explicitly
(cuDNN's default lets convolutions use TF32); "tf32" lets CUDA matmuls and convolutions use TF32
tensor cores; "bf16" autocasts the encoder forward to bfloat16 (the rest as fp32). The merge and the
contraction of the merged parameters' gradients into the lambdas gradient run in IEEE fp32 in every
mode (`ieee_fp32`). Source for the flags: PyTorch's "CUDA semantics" notes (TF32 on Ampere and later
devices).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager

import torch

PRECISIONS = ("fp32", "tf32", "bf16")


# Running out of device memory: torch.OutOfMemoryError (torch >= 2.5; torch.cuda.OutOfMemoryError is
# the same class)
OUT_OF_MEMORY: tuple[type[BaseException], ...] = (
    getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError,
)


def check_device(device: str) -> None:
    """ValueError (one line) for a --device torch cannot parse, CUDA where this torch sees no GPU,
    or a GPU index past the machine's device count."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, ...)"
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device}: this torch ({torch.__version__}) sees no CUDA device; use"
            " --device cpu"
        )
    if (
        parsed.type == "cuda"
        and parsed.index is not None
        and parsed.index >= torch.cuda.device_count()
    ):
        count = torch.cuda.device_count()
        raise ValueError(
            f"--device {device}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
            f"(cuda:0 to cuda:{count - 1}); use one of those, or --device cuda"
        )


def check_local_ranks(local_rank: int, local_world: int) -> None:
    """ValueError (one line) when torchrun starts more processes on this node than it has GPUs."""
    count = torch.cuda.device_count()
    if max(local_rank + 1, local_world) > count:
        raise ValueError(
            f"torchrun started {max(local_rank + 1, local_world)} processes on this node, which has"
            f" {count} CUDA device{'s' if count != 1 else ''} (one per process): use"
            f" --nproc_per_node {count} or fewer, or --device cpu (gloo)"
        )


def set_precision(precision: str, device: str | torch.device) -> dict:
    """Set the float32 flags of `precision` for the whole process and return them (`numerics`).

    fp32 and bf16: TF32 off for cuBLAS and cuDNN, float32 matmul precision "highest"; tf32: both on,
    "high". ValueError for an unknown precision, or tf32 off CUDA (TF32 is a GPU tensor-core
    format).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {list(PRECISIONS)}, got {precision!r}")
    tf32 = precision == "tf32"
    if tf32 and torch.device(device).type != "cuda":
        raise ValueError(
            f"--precision tf32 needs a CUDA device (TF32 is a GPU tensor-core format); on {device}"
            " use fp32 or bf16"
        )
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    return numerics(precision)


def numerics(precision: str) -> dict:
    """What the results JSON records: the precision and the float32 flags in force now."""
    return {
        "precision": precision,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """IEEE float32 matmuls inside, whatever the mode (the merge and the lambdas-gradient
    contraction)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if not (matmul or cudnn):
        yield
        return
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The encoder forward's precision: no autocast for 'fp32' and 'tf32' (the flags decide),
    bfloat16 autocast for 'bf16'; ValueError otherwise."""
    if precision in ("fp32", "tf32"):
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")


def free_bytes(device: torch.device) -> int | None:
    """Bytes a new allocation on `device` can still get: the driver's free memory plus what torch's
    caching allocator holds unused. None off CUDA (host memory is not planned for here)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


class PeakMeter:
    """The growth of the device's peak allocated memory (bytes) from its creation to `grown()`
    (CUDA; 0 elsewhere)."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)

    def grown(self) -> int:
        """Bytes the peak allocated memory rose above the allocation at creation (0 off CUDA)."""
        if self.device.type != "cuda":
            return 0
        return max(int(torch.cuda.max_memory_allocated(self.device) - self.base), 0)


def memory_summary(device: torch.device) -> str:
    """'cuda:0, 3.1 of 79.6 GB free' (or the device alone off CUDA): for out-of-memory messages."""
    if device.type != "cuda":
        return str(device)
    try:
        free, total = torch.cuda.mem_get_info(device)
    except RuntimeError:
        return str(device)
    return f"{device}, {free / 1e9:.1f} of {total / 1e9:.1f} GB free"
