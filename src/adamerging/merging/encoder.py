"""The merged image encoder, evaluated functionally: one module, parameters theta(lambdas) from
`merge_entry`.

Every method is evaluated (and AdaMerging trained) through `MergedEncoder`: it keeps theta_0 and the
stacked task vectors of the visual entries on the compute device (theta_0 once: it is also the
module's own parameters), builds the merged parameters once per lambdas table with
`task_vectors.merge_entry` (IEEE fp32 in every precision mode) and calls the CLIP visual tower with
`torch.func.functional_call`, so gradients flow to the lambdas only. The data-based merges (Fisher
merging, RegMean) build their parameters from the experts it gives and are evaluated with `bind`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
from torch.func import functional_call

from adamerging.merging.task_vectors import (
    TaskVectors,
    coefficient_row,
    is_zero_view,
    merge_entry,
    merge_entry_lambdas_grad,
)
from adamerging.models.clip import VISUAL_PREFIX
from adamerging.runtime.device import autocast, ieee_fp32
from adamerging.runtime.files import return_freed_memory


class MergedEncoder:
    """The image encoder at theta_0 + sum_t lambda_t tau_t, evaluated functionally on `device`.

    `theta0`: entry -> tensor (the ImageEncoder layout, `model.*`); `tau`: entry -> [T, *shape];
    `entries`: the state-dict entries in canonical order (row j of a layer-wise lambdas table is
    `entries[j]`). Only the visual entries are merged: the text-side ones never reach the forward.
    The caller's `theta0` and `tau` dicts get the device tensors in place of their visual entries,
    so host copies are released once the device holds them (on the CPU they are the same tensors).
    """

    def __init__(
        self,
        visual: torch.nn.Module,
        theta0: dict[str, torch.Tensor],
        tau: TaskVectors,
        entries: Sequence[str],
        device: str | torch.device,
        checkpointing: bool = False,
        compile: bool = False,
    ):
        self.device = torch.device(device)
        self.entries = list(entries)
        # (row j of the lambdas table, parameter name inside the visual tower)
        self.visual_entries = [
            (j, k[len(VISUAL_PREFIX) :])
            for j, k in enumerate(self.entries)
            if k.startswith(VISUAL_PREFIX)
        ]
        self.theta0 = {
            name: theta0[VISUAL_PREFIX + name].to(self.device, torch.float32)
            for _, name in self.visual_entries
        }
        # zero views (methods that read the experts themselves) stay views, on the device too
        self.tau = {
            name: (
                torch.zeros((), device=self.device).expand(t.shape)
                if is_zero_view(t)
                else t.to(self.device, torch.float32)
            )
            for name, t in ((name, tau[VISUAL_PREFIX + name]) for _, name in self.visual_entries)
        }
        # theta_0 once on the device: the module's own parameters become these tensors (never read
        # by the functional forward, which binds merged ones, but the module must live on the
        # device)
        visual.load_state_dict(self.theta0, strict=False, assign=True)
        self.visual = visual.to(self.device).eval()
        for p in self.visual.parameters():
            p.requires_grad_(False)
        moved = any(
            theta0[VISUAL_PREFIX + name] is not self.theta0[name] for _, name in self.visual_entries
        )
        for _, name in self.visual_entries:
            theta0[VISUAL_PREFIX + name], tau[VISUAL_PREFIX + name] = (
                self.theta0[name],
                self.tau[name],
            )
        if moved:
            return_freed_memory()  # the host copies' heap pages, now unreferenced
        # Recompute block activations in backward: ViT-L/14 memory in exchange for time. Set both
        # ways, since the module may be shared with an earlier MergedEncoder.
        self.checkpointing = checkpointing
        self.visual.set_grad_checkpointing(checkpointing)
        self.num_tasks = next(iter(self.tau.values())).shape[0]
        self._forward = torch.compile(self._call) if compile else self._call

    def _rows(self, lambdas: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each visual entry's lambdas [T] (row j of a layer-wise table, row 0 of a task-wise
        one)."""
        lambdas = lambdas.to(self.device)
        if (
            lambdas.dim() != 2
            or lambdas.shape[0] not in (1, len(self.entries))
            or lambdas.shape[1] != self.num_tasks
        ):
            raise ValueError(
                f"lambdas must be [1 or {len(self.entries)}, {self.num_tasks}] (rows: entries,"
                f" columns: tasks), got {tuple(lambdas.shape)}"
            )
        task_wise = lambdas.shape[0] == 1
        return {name: lambdas[0 if task_wise else j] for j, name in self.visual_entries}

    def visual_params(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The visual entries of an encoder state dict (`model.*`, e.g. an expert's) as parameters
        on the device, fp32."""
        return {
            name: state[VISUAL_PREFIX + name].to(self.device, torch.float32)
            for _, name in self.visual_entries
        }

    def params(self, lambdas: torch.Tensor) -> dict[str, torch.Tensor]:
        """Merged visual parameters for a lambdas table [R, T] (R = 1: task-wise, R = len(entries):
        layer-wise)."""
        with ieee_fp32():
            return {
                name: merge_entry(self.theta0[name], row, self.tau[name])
                for name, row in self._rows(lambdas).items()
            }

    def streamed_params(
        self, lambdas: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], Callable[[], None]]:
        """Merged visual parameters whose gradients are turned into lambdas gradients as they
        arrive.

        Returns (params, finish): `params` as from `params(lambdas)` but as leaves of their own;
        during a backward through them, each entry's dL/dtheta_j is contracted with its task vectors
        into dL/d lambdas_j ([1, T], `task_vectors.merge_entry_lambdas_grad`) the moment autograd
        has it, and freed. `finish()` (after the backward) sends those into `lambdas`' graph. Same
        lambdas gradient, bit for bit, as backpropagating through `params(lambdas)`, whose merge
        nodes autograd runs last, after every entry's gradient (1.2 GB on ViT-L/14) has been held at
        once.
        """
        rows = {
            name: coefficient_row(row, self.tau[name]) for name, row in self._rows(lambdas).items()
        }
        grads: dict[str, torch.Tensor] = {}
        params = {}
        for name, row in rows.items():
            with torch.no_grad(), ieee_fp32():
                leaf = merge_entry(self.theta0[name], row, self.tau[name]).requires_grad_(True)

            def contract(leaf: torch.Tensor, name: str = name) -> None:
                with ieee_fp32():
                    grads[name] = merge_entry_lambdas_grad(leaf.grad, rows[name], self.tau[name])
                leaf.grad = None

            leaf.register_post_accumulate_grad_hook(contract)
            params[name] = leaf

        def finish() -> None:
            # autograd sums a task-wise row's per-entry gradients in the order the rows' nodes were
            # made (latest first), as through `params`: the same float sums whatever this list's
            # order
            got = [name for name in rows if name in grads]
            if got:
                with ieee_fp32():
                    torch.autograd.backward(
                        [rows[name] for name in got], [grads.pop(name) for name in got]
                    )

        return params, finish

    def _call(self, params: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        return functional_call(self.visual, params, (images,))

    def __call__(self, params: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """Image features [N, D] of normalised images [N, 3, S, S] at merged parameters `params`."""
        return self._forward(params, images)

    def bound(self, params: dict[str, torch.Tensor]) -> AbstractContextManager:
        """Keep `params` bound to the module until the backward is done.

        Activation checkpointing recomputes each block during backward, after `functional_call` has
        put the module's own weights back; the recomputation must see the merged ones. (torch.func
        uses this same context internally; without checkpointing it is not needed.)
        """
        if not self.checkpointing:
            return contextlib.nullcontext()
        from torch.nn.utils.stateless import _reparametrize_module

        return _reparametrize_module(self.visual, params)

    def encoder(
        self, lambdas: torch.Tensor, precision: str = "fp32"
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """A plain function images [N, 3, S, S] -> features [N, D] (float32) at a fixed lambdas
        table [R, T]."""
        with torch.no_grad():
            return self.bind(self.params(lambdas), precision)

    def bind(
        self, params: dict[str, torch.Tensor], precision: str = "fp32"
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """A plain function images [N, 3, S, S] -> features [N, D] (float32) at fixed merged visual
        parameters `params` (names inside the visual tower, as from `params`; also those of a
        data-based merge rule)."""

        def encode(x: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, precision):
                return self(params, x).float()

        return encode
