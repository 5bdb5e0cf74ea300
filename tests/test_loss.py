"""The three GRPO loss functions of rl.py against hand-computed values."""
import math

import pytest
import torch

from rl import grpo_advantages, kl_penalty, policy_loss, token_sum


def test_advantages_normalise_each_group_with_unbiased_std():
    adv = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.2, 0.4]), group_size=3)
    # group 1: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3)
    s = math.sqrt(1 / 3)
    assert adv[:3].tolist() == pytest.approx([(2 / 3) / (s + 1e-6), (-1 / 3) / (s + 1e-6),
                                              (-1 / 3) / (s + 1e-6)])
    # group 2: mean 0.2, std 0.2
    assert adv[3:].tolist() == pytest.approx([-0.2 / (0.2 + 1e-6), 0.0, 0.2 / (0.2 + 1e-6)],
                                             abs=1e-6)


def test_zero_variance_group_gets_zero_advantage_not_nan():
    adv = grpo_advantages(torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0, 0.0, 1.0, 0.0]), group_size=4)
    assert torch.isfinite(adv).all()
    assert adv[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert adv[4:].abs().sum() > 0


@pytest.mark.parametrize("value", [0.8, 0.86, 1.1, 0.1, 0.16, 0.14])
def test_a_group_of_equal_rewards_gets_exactly_zero(value):
    # The rewards the reward function really produces: float32 means of these are off by an
    # ulp, which divided by (std 0 + 1e-6) used to give every sample -0.056 (0.8) or -0.007 (0.1).
    rewards = torch.tensor([value] * 8 + [1.1, 0.8, 0.16, 0.1, 1.1, 1.1, 0.8, 0.0])
    adv = grpo_advantages(rewards, group_size=8)
    assert adv[:8].tolist() == [0.0] * 8
    r = rewards[8:].double()
    assert adv[8:].tolist() == pytest.approx(((r - r.mean()) / (r.std() + 1e-6)).tolist(), rel=1e-5)


def test_policy_loss_unclipped_is_minus_ratio_times_advantage_per_token():
    logp = torch.log(torch.tensor([[1.1, 0.9, 1.0]]))
    loss, clipped = policy_loss(logp, torch.zeros(1, 3), torch.tensor([2.0]))
    assert loss[0].tolist() == pytest.approx([-1.1 * 2, -0.9 * 2, -1.0 * 2])
    assert clipped.sum().item() == 0.0
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # the masked token is left out
    assert token_sum(loss, mask).item() == pytest.approx(-(1.1 * 2 + 0.9 * 2))


def test_policy_loss_clips_on_both_sides():
    old = torch.zeros(2, 1)
    logp = torch.log(torch.tensor([[1.5], [0.5]]))
    # positive advantage, ratio 1.5 -> clipped to 1.2; negative advantage, ratio 0.5 -> clipped
    # to 0.8
    loss, clipped = policy_loss(logp, old, torch.tensor([1.0, -1.0]), clip_low=0.2, clip_high=0.2)
    assert loss.flatten().tolist() == pytest.approx([-1.2 * 1, -0.8 * -1])
    assert clipped.flatten().tolist() == [1.0, 1.0]
    # the pessimistic side is not clipped: positive advantage with a low ratio keeps its ratio
    loss, clipped = policy_loss(logp, old, torch.tensor([-1.0, 1.0]))
    assert loss.flatten().tolist() == pytest.approx([-1.5 * -1, -0.5 * 1])
    assert clipped.sum().item() == 0.0
    # asymmetric bounds
    loss, _ = policy_loss(logp, old, torch.tensor([1.0, -1.0]), clip_low=0.1, clip_high=0.3)
    assert loss.flatten().tolist() == pytest.approx([-1.3 * 1, -0.9 * -1])


def test_dual_clip_bounds_the_loss_of_a_negative_advantage():
    old = torch.zeros(3, 1)
    logp = torch.log(torch.tensor([[5.0], [2.0], [5.0]]))
    loss, _ = policy_loss(logp, old, torch.tensor([-0.5, -0.5, 0.5]), dual_clip=3.0)
    # ratio 5, A < 0: max(5 * 0.5, 1.2 * 0.5) = 2.5, bounded by 3 * 0.5 = 1.5
    # ratio 2, A < 0: 2 * 0.5 = 1.0, under the bound; ratio 5, A > 0: clipped to -1.2 * 0.5, no
    # dual clip
    assert loss.flatten().tolist() == pytest.approx([1.5, 1.0, -0.6])


def test_kl_k3_values_and_clamp():
    logp = torch.tensor([0.0, -1.0, 0.0, -30.0])
    ref = torch.tensor([0.0, 0.0, -1.0, 0.0])
    kl = kl_penalty(logp, ref)
    assert kl[0].item() == 0.0
    assert kl[1].item() == pytest.approx(math.exp(1) - 1 - 1)      # d = 1
    assert kl[2].item() == pytest.approx(math.exp(-1) + 1 - 1)     # d = -1
    assert kl[3].item() == 10.0                                    # exp(30) clamped
    assert (kl >= 0).all()


def test_kl_far_from_the_reference_stays_finite_with_a_finite_gradient():
    # d = ref - logp = 100 where the mask is 0: exp(100) is inf in float32, and 0 x inf would be
    # NaN in the backward had d not been clamped before exp.
    logp = torch.tensor([-100.0, -1.0], requires_grad=True)
    kl = kl_penalty(logp, torch.tensor([0.0, 0.0]))
    token_sum(kl, torch.tensor([0.0, 1.0])).backward()
    assert kl[0].item() == 10.0 and torch.isfinite(logp.grad).all()
    assert logp.grad[0].item() == 0.0 and logp.grad[1].item() == pytest.approx(1 - math.exp(1))
