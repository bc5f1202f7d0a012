"""Learned modality weights for MSD: a weight network fitted by one-step-lookahead bilevel optimisation.

Jin et al., "MSD: Saliency-aware Knowledge Distillation for Multimodal Understanding", Findings of EMNLP 2021, also
learn the per-instance weights of the modality KD terms with a meta-learning approach. Ours (the method is our
choice, in the style of Ren et al. 2018, "Learning to Reweight Examples", and Shu et al. 2019, "Meta-Weight-Net"):

- :class:`WeightNet` maps each instance's saliency features (B, F) to one weight per modality term (B, M),
  ``2 * sigmoid(mlp(features))`` in (0, 2), its last layer zero-initialised so training starts from uniform weights.
- :func:`lookahead_grads`: the student takes one virtual SGD step on the weighted training loss,
  ``theta' = theta - alpha * grad_theta L_train(theta, phi)`` (kept differentiable in ``phi``), and the gradient
  of the held-out loss ``L_heldout(theta')`` with respect to the weight network's parameters ``phi`` is returned:
  the direction in which the weights would have made the student's step better for held-out data.

The student's real step then uses the updated weights, detached. Under DDP each rank takes its own virtual step
on its own batch; the caller averages the ``phi`` gradients over ranks (:func:`average_across_ranks`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn


class WeightNet(nn.Module):
    """Saliency features (B, F) -> weights (B, M) in (0, 2); exactly 1 everywhere at initialisation."""

    def __init__(self, features: int, terms: int, hidden: int = 16) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, terms))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, features: Tensor) -> Tensor:
        """In the network's own dtype (bf16 under ``bf16-true``), without autocast; float32 weights out."""
        with torch.autocast(features.device.type, enabled=False):
            out = self.mlp(features.to(self.mlp[0].weight.dtype))
        return 2.0 * torch.sigmoid(out.float())  # (B, M)


def lookahead_grads(
    params: dict[str, Tensor],
    train_loss: Callable[[dict[str, Tensor]], Tensor],
    heldout_loss: Callable[[dict[str, Tensor]], Tensor],
    meta_params: Sequence[Tensor],
    inner_lr: float,
) -> tuple[list[Tensor], Tensor]:
    """Gradients of ``heldout_loss(theta - inner_lr * grad train_loss(theta))`` w.r.t. ``meta_params``.

    ``params``: the student's trainable parameters by name (theta); ``train_loss(params)`` must depend on
    ``meta_params`` (the weights it applies come from them) and ``heldout_loss(params)`` must not.
    ``train_loss`` may ignore its argument and reuse outputs already computed from ``params`` themselves. Returns the
    gradients (zeros for meta parameters the held-out loss does not reach) and the held-out loss (detached).
    """
    names = list(params)
    loss = train_loss(params)
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True, allow_unused=True)
    stepped = {n: params[n] if g is None else params[n] - inner_lr * g for n, g in zip(names, grads, strict=True)}
    held = heldout_loss(stepped)
    meta = torch.autograd.grad(held, list(meta_params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(meta_params, meta, strict=True)], held.detach()


def average_across_ranks(grads: list[Tensor]) -> list[Tensor]:
    """The mean of ``grads`` over the DDP ranks (unchanged on one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return grads
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    return [chunk.view_as(g) for chunk, g in zip(flat.split([g.numel() for g in grads]), grads, strict=True)]
