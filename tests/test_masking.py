"""Masking statistics: exact visible counts, Dirichlet budgets that follow `alphas`, per-sample user masks."""

from __future__ import annotations

import pytest
import torch
from conftest import fixture_inputs, fixture_masks
from torch.testing import assert_close

from multimae_cli.model.masking import mask_indices, random_masks, sample_budgets


@pytest.mark.parametrize("num_visible", [0, 1, 20, 47, 48])
def test_exactly_k_visible_per_sample(num_visible):
    torch.manual_seed(0)
    masks = random_masks(64, 3, 16, num_visible, [1.0, 1.0, 1.0], False, torch.device("cpu"))
    assert masks.shape == (64, 48)
    assert torch.all((masks == 0).sum(1) == num_visible)


def test_budgets_follow_alphas():
    torch.manual_seed(0)
    alphas = [1.0, 2.0, 5.0]
    shares = sample_budgets(20000, alphas, False, torch.device("cpu"))
    assert_close(shares.sum(1), torch.ones(20000))
    assert_close(shares.mean(0), torch.tensor(alphas) / sum(alphas), atol=0.01, rtol=0)
    # and so do the visible tokens each modality gets
    masks = random_masks(20000, 3, 196, 98, alphas, False, torch.device("cpu"))
    visible_share = (masks == 0).view(20000, 3, 196).sum(-1).float().mean(0) / 98
    assert_close(visible_share, torch.tensor(alphas) / sum(alphas), atol=0.01, rtol=0)


def test_uniform_task_sampling_drops_modalities():
    torch.manual_seed(0)
    masks = random_masks(6000, 3, 196, 98, [1.0] * 3, True, torch.device("cpu"))
    counts = (masks == 0).view(6000, 3, 196).sum(-1)
    active = (counts > 0).sum(1)
    # of the 7 non-empty subsets, 3 use one modality, 3 use two, 1 uses all three
    for used, expected in ((1, 3 / 7), (2, 3 / 7), (3, 1 / 7)):
        assert abs((active == used).float().mean().item() - expected) < 0.03
    assert torch.all(counts.sum(1) == 98)


def test_random_masks_are_uniform_within_a_modality():
    torch.manual_seed(0)
    masks = random_masks(20000, 2, 16, 8, [1.0, 1.0], False, torch.device("cpu"))
    per_position = (masks == 0).float().mean(0)
    assert per_position.std() < 0.01  # no position is favoured


def test_mask_indices_keep_visible_in_order():
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 1, 0, 1]])
    keep, restore = mask_indices(mask, 2)
    assert keep.tolist() == [[1, 3], [0, 3]]
    # restore undoes the [visible..., masked...] order: gathering positions back gives 0..4
    shuffled = torch.argsort(mask, dim=1, stable=True)
    assert torch.equal(torch.gather(shuffled, 1, restore), torch.arange(5).expand(2, 5))


def test_batched_user_masks_match_per_sample_calls(tiny_model, tiny_io):
    """The official explicit-mask path is wrong for batch > 1; ours matches one call per sample."""
    inputs, masks = fixture_inputs(tiny_io), fixture_masks(tiny_io)
    with torch.no_grad():
        batched, _ = tiny_model(inputs, task_masks=masks)
        for i in range(2):
            single, _ = tiny_model({k: v[i:i + 1] for k, v in inputs.items()},
                                   task_masks={k: v[i:i + 1] for k, v in masks.items()})
            for name, pred in single.items():
                assert_close(batched[name][i:i + 1], pred, atol=1e-5, rtol=1e-5)


def test_random_forward_uses_config_budget(tiny_model, tiny_io):
    torch.manual_seed(0)
    with torch.no_grad():
        encoded = tiny_model.encode(fixture_inputs(tiny_io), num_encoded_tokens=12, alphas=[1.0, 0.5, 2.0])
    assert encoded.tokens.shape == (2, 12 + 1, 96)
    visible = sum((m == 0).sum(1) for m in encoded.masks.values())
    assert visible.tolist() == [12, 12]
    torch.manual_seed(0)
    again = tiny_model.encode(fixture_inputs(tiny_io), num_encoded_tokens=12, alphas=[1.0, 0.5, 2.0])
    assert torch.equal(again.ids_keep, encoded.ids_keep)  # seeded runs repeat
