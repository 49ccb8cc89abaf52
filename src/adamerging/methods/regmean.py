"""RegMean: each linear layer merged by least squares on the experts' own layer inputs; the rest
averaged.

    W = (sum_t G_t')^-1 sum_t G_t' W_t^T (transposed back),  G_t = X_t^T X_t / rows,
    G_t' = G_t with its non-diagonal entries times `ratio`

Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models" (ICLR 2023), Sec. 3
(the closed form, Eq. 2) and Sec. 3.2 (non-diagonal entries scaled by alpha), as FusionBench applies
it to CLIP (github.com/tanganke/fusion_bench, `method/regmean/{regmean,clip_regmean}.py`,
`config/method/regmean/clip_regmean.yaml`): 256 unlabeled train images per task, alpha 0.95, the
Gram matrix averaged over every token of every image (rows = images x tokens), the inverse of the
summed Gram matrices, and only the weights of the image encoder's linear layers merged this way. In
FusionBench's Hugging Face CLIP those are each block's q/k/v/out projections and its two MLP layers;
in open_clip they are `attn.in_proj_weight` (q, k, v stacked; their common input is the block's
`ln_1` output), `attn.out_proj.weight`, `mlp.c_fc.weight` and `mlp.c_proj.weight`. Everything else
(biases, layer norms, embeddings, the patch convolution, the output projection `proj`) is the plain
average of the experts, as there.

open_clip's attention runs `F.multi_head_attention_forward`, which never calls `out_proj` as a
module, so the input of `out_proj` (the heads' concatenated attention outputs) is recomputed from
the attention module's input with its own weights (`attention_context`; tests check that `out_proj`
of it is the module's output).

Memory: the experts are read from their files one at a time (the problem holds no task vectors for
this method: loading computes them once for the checks on the experts, then drops them); each
batch's Gram matrix is folded at once into sum_t G_t' and sum_t G_t' W_t^T, so no per-task Gram
matrices are kept (ViT-B/32: 0.54 GB + 0.34 GB for the two sums; ViT-L/14: 1.9 GB +
1.2 GB), plus the running sum of the experts for the averaged entries.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from adamerging.merging.encoder import MergedEncoder
from adamerging.methods.fisher import Params, batches
from adamerging.run.config import RunConfig
from adamerging.run.experts import expert_paths, load_expert
from adamerging.run.problem import Problem
from adamerging.run.train_data import train_samples

Sink = Callable[[str, torch.Tensor], None]  # (weight name, the layer's input [..., in_features])


def attention_context(attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """The input of `attn.out_proj` in self-attention on `x` without a mask: every head's softmax(q
    k^T / sqrt(d_head)) v, heads concatenated. Same layout as `x` ([B, L, d] if batch_first, else
    [L, B, d])."""
    seq = x if attn.batch_first else x.transpose(0, 1)
    b, n, d = seq.shape
    q, k, v = (
        t.view(b, n, attn.num_heads, d // attn.num_heads).transpose(1, 2)
        for t in F.linear(seq, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    )
    context = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
    return context if attn.batch_first else context.transpose(0, 1)


@contextlib.contextmanager
def linear_inputs(module: nn.Module, sink: Sink) -> Iterator[list[str]]:
    """While active, every forward of `module` sends each linear layer's input to `sink(weight name,
    x)`.

    Linear layers: every `nn.Linear` (its `<name>.weight`) and every self-attention
    `nn.MultiheadAttention` (`<name>.in_proj_weight` gets the query input, `<name>.out_proj.weight`
    the recomputed `attention_context`). Yields the weight names. ValueError for cross-attention or
    an attention mask.
    """
    names, handles = [], []
    attention = {name for name, m in module.named_modules() if isinstance(m, nn.MultiheadAttention)}
    for name, m in module.named_modules():
        if isinstance(m, nn.MultiheadAttention):

            def attend(m, args, kwargs, output, name=name):
                query, key = args[0], args[1] if len(args) > 1 else kwargs.get("key")
                if (
                    key is not query
                    or kwargs.get("attn_mask") is not None
                    or kwargs.get("key_padding_mask") is not None
                ):
                    raise ValueError(
                        f"RegMean: {name} is not unmasked self-attention; its out_proj input cannot"
                        " be recomputed"
                    )
                sink(f"{name}.in_proj_weight", query)
                sink(f"{name}.out_proj.weight", attention_context(m, query))

            handles.append(m.register_forward_hook(attend, with_kwargs=True))
            names += [f"{name}.in_proj_weight", f"{name}.out_proj.weight"]
        # MHA's out_proj: above
        elif isinstance(m, nn.Linear) and name.rpartition(".")[0] not in attention:
            # returns None: the layer's inputs stay as they are
            def inputs(m, args, name=name) -> None:
                sink(f"{name}.weight", args[0])

            handles.append(m.register_forward_pre_hook(inputs))
            names.append(f"{name}.weight")
    try:
        yield names
    finally:
        for handle in handles:
            handle.remove()


def reduce_non_diagonal(gram: torch.Tensor, ratio: float) -> torch.Tensor:
    """`gram` with every non-diagonal entry times `ratio` (a new tensor)."""
    out = gram * ratio
    out.diagonal().copy_(gram.diagonal())
    return out


class RegMeanSums:
    """Streams sum_t G_t' and sum_t G_t' W_t^T per linear layer; `solve()` gives the merged weights.

    `add(name, x, weight, rows)` folds one batch of inputs x [..., in] of expert t's layer `name`
    (weight [out, in]), with `rows` the task's total input rows, so that the batches of a task sum
    to G_t'.
    """

    def __init__(self, ratio: float = 0.95):
        self.ratio = ratio
        self.gram: Params = {}
        self.gram_weight: Params = {}

    def add(self, name: str, x: torch.Tensor, weight: torch.Tensor, rows: int) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        gram = reduce_non_diagonal(x.t() @ x, self.ratio).div_(rows)
        product = gram @ weight.detach().float().t()
        if name in self.gram:
            self.gram[name].add_(gram)
            self.gram_weight[name].add_(product)
        else:
            self.gram[name], self.gram_weight[name] = gram, product

    def solve(self) -> Params:
        """W = (sum_t G_t')^-1 sum_t G_t' W_t^T, transposed to [out, in], per layer (solved in
        float64).

        ValueError naming the layer when its summed Gram matrix is singular (e.g. ratio 1 with fewer
        input rows than features)."""
        out = {}
        for name, gram in self.gram.items():
            try:
                merged = torch.linalg.solve(gram.double(), self.gram_weight[name].double())
            except RuntimeError:
                raise ValueError(
                    f"RegMean: the Gram matrix of {name} is singular: use more --train-images, or "
                    f"--regmean-ratio below 1 (now {self.ratio})"
                ) from None
            out[name] = merged.t().to(gram.dtype).contiguous()
        return out


def gram_sums(
    forward: Callable[[Params, torch.Tensor], object],
    module: nn.Module,
    params: Params,
    inputs: torch.Tensor,
    batch_size: int,
    sums: RegMeanSums,
) -> None:
    """Fold one expert (`params`, the parameters `forward` runs `module` with) on `inputs` [N, ...]
    into `sums`."""
    count, current = len(inputs), [0]

    def sink(name: str, x: torch.Tensor) -> None:
        # input rows per image: its tokens (all images alike)
        per_image = x.numel() // x.shape[-1] // current[0]
        sums.add(name, x, params[name], count * per_image)

    with torch.no_grad(), linear_inputs(module, sink):
        for x in batches(inputs, batch_size):
            current[0] = len(x)
            forward(params, x)


def regmean(problem: Problem, merged: MergedEncoder, config: RunConfig) -> tuple[Params, dict]:
    """The merge rule of `regmean`: merged visual parameters (names inside the visual tower) and a
    record for the results JSON (train images used per task, layers merged by RegMean, seconds).

    The experts are read from their files one at a time (the problem holds no task vectors for this
    method); the entries RegMean does not solve for are their mean.
    """
    started = time.perf_counter()
    sums, used, total = RegMeanSums(config.regmean_ratio), {}, {}
    for sample, path in zip(train_samples(config, problem), expert_paths(config, problem.tasks)):
        expert = merged.visual_params(load_expert(path, problem.clip, problem.theta0))
        gram_sums(
            lambda params, x: merged(params, problem.normalize(x)),
            merged.visual,
            expert,
            sample.images,
            config.train_batch_size,
            sums,
        )
        for name, value in expert.items():
            total[name] = total[name].add_(value) if name in total else value.clone()
        used[sample.name] = sample.record
        del expert
    out = {name: value.div_(len(used)) for name, value in total.items()}
    solved = sums.solve()
    out.update(solved)
    return out, {
        "train_data": used,
        "regmean_layers": sorted(solved),
        "seconds": time.perf_counter() - started,
    }
