"""Which tokens the encoder sees: Dirichlet token budgets across modalities, or masks the caller gives.

Masks are (B, N) integer tensors per modality, 1 = masked, 0 = visible, in row-major token order (the
official convention). Everything here is batched on the tokens' device: no Python loop over samples and
no host synchronisation on the random path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..errors import InputError


def sample_budgets(batch: int, alphas: Sequence[float], uniform_tasks: bool, device: torch.device) -> torch.Tensor:
    """Per-sample shares of the token budget, (B, n_modalities), each row drawn from a Dirichlet.

    With `uniform_tasks` each sample first draws one of the 2^n - 1 non-empty modality subsets uniformly
    and only those modalities keep their concentration (the others get 1e-5), as officially.
    """
    concentration = torch.as_tensor(alphas, dtype=torch.float32, device=device).expand(batch, -1)
    if uniform_tasks:
        n = concentration.shape[1]
        subset = torch.randint(1, 2**n, (batch, 1), device=device)
        chosen = (subset >> torch.arange(n, device=device)) & 1
        concentration = concentration * chosen + 1e-5
    return torch.distributions.Dirichlet(concentration).sample()


def random_masks(batch: int, num_modalities: int, tokens_per_modality: int, num_visible: int,
                 alphas: float | Sequence[float], uniform_tasks: bool, device: torch.device) -> torch.Tensor:
    """(B, n*N) masks with exactly `num_visible` zeros per row, spread across modalities by Dirichlet budgets.

    `alphas` is one concentration for all modalities or one per modality. Each modality's budget is
    round(share * num_visible) tokens chosen uniformly within it; the rounding is then corrected with random
    promotions or demotions so every sample has exactly `num_visible`.
    """
    if isinstance(alphas, (int, float)):
        alphas = [float(alphas)] * num_modalities
    if len(alphas) != num_modalities:
        raise InputError(f"alphas has {len(alphas)} values for {num_modalities} inputs")
    total = num_modalities * tokens_per_modality
    budgets = (sample_budgets(batch, alphas, uniform_tasks, device) * num_visible).round()
    modality_of_token = torch.arange(num_modalities, device=device).repeat_interleave(tokens_per_modality)
    # Sorting (modality id + noise) groups tokens by modality in random order: the rank inside the group
    # is a uniform permutation, and a token is kept when its rank is below its modality's budget.
    order = torch.argsort(modality_of_token + torch.rand(batch, total, device=device), dim=1)
    rank = torch.argsort(order, dim=1) - modality_of_token * tokens_per_modality
    mask = (rank >= budgets[:, modality_of_token]).long()
    # Exact count: visible tokens first (random order among them), then the first num_visible are kept.
    shuffle = torch.argsort(mask + torch.rand(batch, total, device=device), dim=1)
    exact = torch.ones_like(mask)
    exact.scatter_(1, shuffle[:, :num_visible], 0)
    return exact


def check_masks(task_masks: Mapping[str, torch.Tensor], modalities: Sequence[str], batch: int,
                tokens_per_modality: int, num_visible: int | None) -> torch.Tensor:
    """Validate caller masks and concatenate them in `modalities` order, (B, n*N).

    Every sample must leave the same number of tokens visible (one batch runs at one width).
    """
    missing = [m for m in modalities if m not in task_masks]
    extra = [m for m in task_masks if m not in modalities]
    if missing or extra:
        raise InputError(f"task_masks must have one mask per input modality {list(modalities)}: "
                         f"missing {missing}, not an input {extra}")
    parts = []
    for name in modalities:
        mask = task_masks[name]
        if tuple(mask.shape) != (batch, tokens_per_modality):
            raise InputError(f"mask of {name}: expected shape ({batch}, {tokens_per_modality}), "
                             f"got {tuple(mask.shape)}")
        parts.append(mask.long())
    mask_all = torch.cat(parts, dim=1)
    if not torch.all((mask_all == 0) | (mask_all == 1)):
        raise InputError("task_masks must hold only 0 (visible) and 1 (masked)")
    visible = (mask_all == 0).sum(dim=1)
    if not torch.all(visible == visible[0]):
        raise InputError(f"task_masks leave a different number of visible tokens per sample: {visible.tolist()}; "
                         "every sample of a batch must have the same count")
    if num_visible is not None and int(visible[0]) != num_visible:
        raise InputError(f"task_masks leave {int(visible[0])} visible tokens, but num_encoded_tokens={num_visible}")
    return mask_all


def mask_indices(mask_all: torch.Tensor, num_visible: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`ids_keep` (B, k): visible token indices, ascending; `ids_restore` (B, N): undoes [visible, masked]."""
    ids_shuffle = torch.argsort(mask_all, dim=1, stable=True)
    return ids_shuffle[:, :num_visible], torch.argsort(ids_shuffle, dim=1)
