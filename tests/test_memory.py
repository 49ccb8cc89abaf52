"""Loading holds no random architecture weights, no zero task vectors, and gives the dense TIES
result; large CPU tensors on huge pages."""

import os

import torch
from model_fixtures import MINI_TASKS, mini_argv, write_mini_problem
from test_merging import _dense_ties

from adamerging.checkpoints import hf
from adamerging.commands.pipeline import parse_config
from adamerging.merging.task_vectors import is_zero_view, task_vectors
from adamerging.run import experts
from adamerging.run.experts import load_task_vectors


def test_loading_assigns_theta0_streams_experts_and_selects_ties_exactly(tmp_path):
    root = write_mini_problem(tmp_path)
    vectors = load_task_vectors(parse_config("ties_merging", mini_argv(root)), "ties")
    # the architecture's visual weights are theta_0's own tensors; the text transformer never
    # existed
    for name, p in vectors.clip.visual.named_parameters():
        assert p.data_ptr() == vectors.theta0["model.visual." + name].data_ptr(), name
    assert all(p.is_meta for p in vectors.clip.transformer.parameters())
    # the text-side leftovers' task vectors (all zero in these files) take no memory
    text_side = [k for k in vectors.entries if not k.startswith("model.visual.")]
    assert text_side and all(is_zero_view(vectors.tau[k]) for k in text_side)
    # same selection as the dense [T, D] implementation on task vectors built from all experts at
    # once
    folder = root / "checkpoints" / "mini"
    theta0 = {k: v.float() for k, v in hf.load_weights(folder / "zeroshot.pt").items()}
    experts = [
        {k: v.float() for k, v in hf.load_weights(folder / task / "finetuned.pt").items()}
        for task in MINI_TASKS
    ]
    dense = _dense_ties(
        {k: t.contiguous() for k, t in task_vectors(theta0, experts).items()}, 0.2, "sum"
    )
    assert sorted(vectors.tau) == sorted(dense)
    for key in dense:
        assert torch.equal(vectors.tau[key], dense[key]), key


def test_importing_the_package_defaults_large_cpu_tensors_to_huge_pages_unless_the_user_chose(
    monkeypatch,
):
    import importlib

    import adamerging

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    importlib.reload(adamerging)
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    importlib.reload(adamerging)
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"


def test_fused_step_contracts_each_merged_gradient_as_it_arrives_with_the_same_lambdas_gradient(
    monkeypatch,
):
    # Backpropagating through the merge, autograd runs the merge's nodes last, holding every merged
    # parameter's gradient at once; streamed, each is contracted into its lambdas gradient and freed
    # as it arrives (backward order: the last layers first), giving the same numbers bit for bit.
    from test_adaptation import _problem, _run

    from adamerging.merging import encoder as merged_encoder
    from adamerging.merging.encoder import MergedEncoder
    from adamerging.methods.adamerging import Lambdas
    from adamerging.models.objectives import softmax_entropy

    clip, theta0, tau, entries, data, normalize = _problem(tasks=3, images=8)
    name_of = {}
    # (entry, merged-parameter gradients alive at that moment)
    contracted: list[tuple[str, int]] = []
    leaves: dict[str, torch.Tensor] = {}
    plain = merged_encoder.merge_entry_lambdas_grad

    def counting(grad_j, row_j, tau_j):
        contracted.append(
            (name_of[tau_j.data_ptr()], sum(p.grad is not None for p in leaves.values()))
        )
        return plain(grad_j, row_j, tau_j)

    monkeypatch.setattr(merged_encoder, "merge_entry_lambdas_grad", counting)

    def loss(merged, params):
        return sum(
            softmax_entropy(t.head(merged(params, normalize(t.images[:4])))).mean() for t in data
        )

    for checkpointing in (False, True):
        merged = MergedEncoder(
            clip.visual, theta0, tau, entries, "cpu", checkpointing=checkpointing
        )
        name_of.update({v.data_ptr(): k for k, v in merged.tau.items()})
        # task-wise: every entry's gradient sums into one row, in autograd's order
        for rows in (1, len(entries)):
            # some clamped
            init = torch.rand(rows, 3, generator=torch.Generator().manual_seed(rows)) * 1.2 - 0.1
            reference, streamed = Lambdas(rows, 3, init), Lambdas(rows, 3, init)
            params = merged.params(reference())
            with merged.bound(params):
                loss(merged, params).backward()
            contracted.clear()
            params, finish = merged.streamed_params(streamed())
            leaves.clear()
            leaves.update(params)
            with merged.bound(params):
                loss(merged, params).backward()
            finish()
            assert torch.equal(streamed.raw.grad, reference.raw.grad), (checkpointing, rows)
            # each visual entry once
            assert sorted(name for name, _ in contracted) == sorted(merged.tau)
            # only its own gradient
            assert all(alive == 1 for _, alive in contracted)
            # during backward, not after
            assert contracted[0][0] in ("proj", "ln_post.weight", "ln_post.bias")
            assert all(p.grad is None for p in params.values())

    # the adaptation loop's default (fused) step goes this way; per-task mode does not
    contracted.clear()
    _run(data, clip, theta0, tau, entries, normalize, steps=1, batch_size_adapt=2)
    assert len(contracted) == len(merged.tau)
    contracted.clear()
    _run(
        data,
        clip,
        theta0,
        tau,
        entries,
        normalize,
        steps=1,
        batch_size_adapt=2,
        adapt_mode="per-task",
    )
    assert not contracted


def test_quick_gelu_keeps_only_its_input_for_backward_with_bit_identical_values_and_gradients():
    # open_clip's x * sigmoid(1.702 x) keeps x and the sigmoid's output for backward; the models
    # built here keep x only (the sigmoid is recomputed), the same numbers: one hidden-layer tensor
    # less per block.
    import copy

    import open_clip

    from adamerging.models.clip import QuickGELU, create_clip

    torch.manual_seed(0)
    lean = create_clip("mini").visual
    gelus = [m for m in lean.modules() if type(m).__name__ == "QuickGELU"]
    assert len(gelus) == len(lean.transformer.resblocks)
    assert all(type(m) is QuickGELU for m in gelus)
    composite = copy.deepcopy(lean)
    for block in composite.transformer.resblocks:
        block.mlp.gelu = open_clip.transformer.QuickGELU()
    x = torch.randn(3, 3, *lean.image_size)
    for precision in (torch.float32, torch.bfloat16):
        saved, outputs = [], []
        for model in (lean, composite):
            model.zero_grad(set_to_none=True)
            kept: dict[int, int] = {}  # storage -> bytes: a tensor saved by two nodes is held once

            def pack(t, kept=kept):
                kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
                return t

            with (
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == torch.bfloat16),
            ):
                y = model(x)
            (y.float() ** 2).sum().backward()
            saved.append(sum(kept.values()))
            outputs.append((y, [p.grad for p in model.parameters()]))
        assert torch.equal(outputs[0][0], outputs[1][0])
        assert all(torch.equal(a, b) for a, b in zip(outputs[0][1], outputs[1][1]))
        hidden = lean.transformer.resblocks[0].mlp.c_fc.out_features
        tokens = (lean.image_size[0] // lean.conv1.kernel_size[0]) ** 2 + 1
        element = 2 if precision == torch.bfloat16 else 4
        assert saved[1] - saved[0] == len(gelus) * 3 * tokens * hidden * element, precision


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_freed_heap_pages_go_back_to_the_system_after_loading(tmp_path, monkeypatch):
    # Released experts leave their small-tensor pages on the C heap unless trimmed.
    import pytest

    from adamerging.runtime.files import return_freed_memory

    # 64 KB each (heap, not mmap), 190 MB touched
    blocks = [torch.ones(16 * 1024) for _ in range(3000)]
    keep = torch.ones(16 * 1024)  # above them: the heap's top is not free
    del blocks
    before = _rss_bytes()
    if not return_freed_memory():
        pytest.skip("no malloc_trim in this C library")
    assert before - _rss_bytes() > 100 * 2**20
    del keep

    calls = []
    monkeypatch.setattr(experts, "return_freed_memory", lambda: calls.append(1))
    load_task_vectors(
        parse_config("task_arithmetic", mini_argv(write_mini_problem(tmp_path))), "plain"
    )
    assert calls == [1]


def _file_mapped_ranges(marker: str) -> list[tuple[int, int]]:
    with open("/proc/self/maps") as f:
        return [
            tuple(int(a, 16) for a in line.split()[0].split("-")) for line in f if marker in line
        ]


def test_theta0_text_side_entries_are_file_backed_until_written(tmp_path):
    # Nothing but --save-merged reads theta_0's text-side leftovers: they stay mapped from an
    # unlinked temporary file (out of memory), with the same values, and the saved merged model has
    # them.
    from adamerging.checkpoints.loading import load_checkpoint
    from adamerging.commands.pipeline import run

    root = write_mini_problem(tmp_path)
    vectors = load_task_vectors(parse_config("task_arithmetic", mini_argv(root)), "plain")
    ranges = _file_mapped_ranges("adamerging-")
    original = hf.load_weights(root / "checkpoints" / "mini" / "zeroshot.pt")
    text_side = [k for k in vectors.entries if not k.startswith("model.visual.")]
    params = dict(vectors.clip.named_parameters())
    for key in vectors.entries:
        ptr = vectors.theta0[key].data_ptr()
        assert any(lo <= ptr < hi for lo, hi in ranges) == (key in text_side), key
        assert torch.equal(vectors.theta0[key], original[key].float()), key
        if key[len("model.") :] in params:
            assert params[key[len("model.") :]].data_ptr() == ptr, key
    out = tmp_path / "merged.pt"
    run(
        "task_arithmetic",
        parse_config("task_arithmetic", mini_argv(root) + ["--save-merged", str(out)]),
    )
    saved = load_checkpoint(out).state_dict
    assert all(torch.equal(saved[k], original[k].float()) for k in text_side)
