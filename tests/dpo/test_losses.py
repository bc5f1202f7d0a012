"""dpo_loss against hand-computed values, and against TRL 1.16's DPOTrainer._compute_loss on the same numbers."""

from __future__ import annotations

import importlib.util
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_modules.dpo.loss import dpo_loss

# trl is a dev dependency, slow to import: only the parity tests load it (see the `trainer_cls` fixture).
needs_trl = pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="needs trl (pip install -e '.[dev]')")

# ------------------------------------------------------------------------------------------------ by hand
# Two pairs, beta = 0.5. Log-ratios: chosen (-1.0 - -1.5, -2.0 - -1.8) = (0.5, -0.2),
# rejected (-3.0 - -2.0, -1.5 - -2.5) = (-1.0, 1.0); h = (1.5, -1.2).
POL_C, POL_R = [-1.0, -2.0], [-3.0, -1.5]
REF_C, REF_R = [-1.5, -1.8], [-2.0, -2.5]
BETA = 0.5
C_RATIO = [p - r for p, r in zip(POL_C, REF_C, strict=True)]
R_RATIO = [p - r for p, r in zip(POL_R, REF_R, strict=True)]
H = [c - r for c, r in zip(C_RATIO, R_RATIO, strict=True)]


def neg_logsigmoid(x: float) -> float:
    """-log sigmoid(x) = log(1 + exp(-x))."""
    return math.log1p(math.exp(-x))


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def t(xs: list[float]) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def run(**kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return dpo_loss(t(POL_C), t(POL_R), t(REF_C), t(REF_R), beta=BETA, **kwargs)


def close(actual: torch.Tensor, expected: float | list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-12, rtol=1e-12)


def test_hand_values_are_what_the_comments_say() -> None:
    assert C_RATIO == pytest.approx([0.5, -0.2])
    assert R_RATIO == pytest.approx([-1.0, 1.0])
    assert H == pytest.approx([1.5, -1.2])


def test_sigmoid() -> None:
    loss, _ = run(loss_type="sigmoid")
    close(loss, mean([math.log(1 + math.exp(-BETA * h)) for h in H]))
    close(loss, (math.log(1 + math.exp(-0.75)) + math.log(1 + math.exp(0.6))) / 2)


def test_hinge() -> None:
    loss, _ = run(loss_type="hinge")
    # 1 - 0.5 * 1.5 = 0.25 and 1 - 0.5 * -1.2 = 1.6
    close(loss, (0.25 + 1.6) / 2)
    # A margin past 1 / beta costs nothing.
    loss, _ = dpo_loss(t([0.0]), t([-5.0]), t([0.0]), t([0.0]), beta=BETA, loss_type="hinge")
    close(loss, 0.0)


def test_ipo_without_lengths() -> None:
    loss, _ = run(loss_type="ipo")
    # (h - 1 / (2 * 0.5))^2 = (h - 1)^2
    close(loss, ((1.5 - 1.0) ** 2 + (-1.2 - 1.0) ** 2) / 2)


def test_ipo_with_lengths() -> None:
    lc, lr = [2.0, 5.0], [4.0, 1.0]
    loss, _ = run(loss_type="ipo", chosen_lengths=t(lc), rejected_lengths=t(lr))
    per = [(c / a - r / b - 1.0) ** 2 for c, r, a, b in zip(C_RATIO, R_RATIO, lc, lr, strict=True)]
    close(loss, mean(per))
    # pair 0: 0.5/2 - (-1.0)/4 = 0.5 -> 0.25; pair 1: -0.2/5 - 1.0/1 = -1.04 -> 4.1616
    close(loss, (0.25 + 4.1616) / 2)
    # Integer lengths (token counts) work the same, and a zero length counts as one.
    loss_int, _ = run(loss_type="ipo", chosen_lengths=torch.tensor([2, 5]), rejected_lengths=torch.tensor([4, 1]))
    close(loss_int, (0.25 + 4.1616) / 2)
    loss_zero, _ = run(loss_type="ipo", chosen_lengths=torch.tensor([0, 1]), rejected_lengths=torch.tensor([1, 0]))
    close(loss_zero, ((0.5 + 1.0 - 1.0) ** 2 + (-0.2 - 1.0 - 1.0) ** 2) / 2)


def test_conservative_sigmoid() -> None:
    eps = 0.1
    loss, _ = run(loss_type="sigmoid", label_smoothing=eps)
    per = [(1 - eps) * neg_logsigmoid(BETA * h) + eps * neg_logsigmoid(-BETA * h) for h in H]
    close(loss, mean(per))
    plain, _ = run(loss_type="sigmoid")
    assert not torch.allclose(loss, plain)


def test_rpo_adds_alpha_times_nll() -> None:
    nll = torch.tensor(2.5, dtype=torch.float64)
    loss, metrics = run(loss_type="sigmoid", rpo_alpha=0.3, chosen_nll=nll)
    close(loss, mean([neg_logsigmoid(BETA * h) for h in H]) + 0.3 * 2.5)
    close(metrics["nll_loss"], [2.5])
    # rpo_alpha = 0 ignores the NLL in the loss but still reports it.
    loss0, metrics0 = run(loss_type="sigmoid", chosen_nll=nll)
    close(loss0, mean([neg_logsigmoid(BETA * h) for h in H]))
    close(metrics0["nll_loss"], [2.5])
    # RPO composes with the other loss types.
    loss_h, _ = run(loss_type="hinge", rpo_alpha=1.0, chosen_nll=nll)
    close(loss_h, (0.25 + 1.6) / 2 + 2.5)


def test_rpo_gradient_reaches_the_nll() -> None:
    nll = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    loss, _ = run(rpo_alpha=0.3, chosen_nll=nll)
    loss.backward()
    close(nll.grad, 0.3)


def test_metrics() -> None:
    _, m = run(loss_type="sigmoid")
    close(m["rewards/chosen"], [0.25, -0.1])
    close(m["rewards/rejected"], [-0.5, 0.5])
    close(m["rewards/margins"], [0.75, -0.6])
    close(m["rewards/accuracies"], [1.0, 0.0])
    close(m["logps/chosen"], POL_C)
    close(m["logps/rejected"], POL_R)
    assert "nll_loss" not in m
    # Metrics are the same whatever the loss type.
    for loss_type in ("hinge", "ipo"):
        _, other = run(loss_type=loss_type)
        for k, v in m.items():
            torch.testing.assert_close(other[k], v)


def test_metrics_are_detached_and_ties_are_not_accurate() -> None:
    pc = torch.tensor([-1.0, -2.0], requires_grad=True)
    _, m = dpo_loss(pc, torch.tensor([-1.0, -3.0]), torch.zeros(2), torch.zeros(2), beta=0.1)
    assert all(not v.requires_grad for v in m.values())
    close(m["rewards/accuracies"], [0.0, 1.0])  # a tie counts as not accurate, as in TRL


def test_sigmoid_gradient() -> None:
    pc = t(POL_C).requires_grad_()
    loss, _ = dpo_loss(pc, t(POL_R), t(REF_C), t(REF_R), beta=BETA)
    loss.backward()
    # d/dpc of mean(-log sigmoid(beta h)) = -beta * sigmoid(-beta h) / B
    expected = [-BETA / (1 + math.exp(BETA * h)) / 2 for h in H]
    close(pc.grad, expected)


def test_bad_loss_type() -> None:
    with pytest.raises(ValueError, match="unknown loss_type 'kto'"):
        run(loss_type="kto")


@pytest.mark.parametrize("eps", [0.5, 0.7, -0.1])
def test_bad_label_smoothing(eps: float) -> None:
    with pytest.raises(ValueError, match="label_smoothing"):
        run(label_smoothing=eps)


def test_rpo_without_nll() -> None:
    with pytest.raises(ValueError, match="chosen_nll"):
        run(rpo_alpha=0.5)


# --------------------------------------------------------------------------------------------- TRL parity
TRL_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected")


class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def gather_for_metrics(x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture(scope="module")
def trainer_cls() -> type:
    from trl.trainer.dpo_trainer import DPOTrainer

    return DPOTrainer


def trl_stand_in(
    cls: type, beta: float, loss_types: list[str], loss_weights: list[float], label_smoothing: float = 0.0
) -> object:
    """A DPOTrainer without __init__: exactly the attributes ``_compute_loss`` reads."""
    obj = cls.__new__(cls)
    obj.beta = beta
    obj.loss_types = loss_types
    obj.loss_weights = loss_weights
    obj.label_smoothing = label_smoothing
    obj.f_divergence_type = "reverse_kl"
    obj.use_weighting = False
    obj.ld_alpha = None
    obj.precompute_ref_logps = True
    obj.aux_loss_enabled = False
    obj.model = nn.Module()  # .training == True -> metrics under "train"
    obj.accelerator = _Accelerator()
    obj._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    obj._total_train_tokens = 0
    obj._tp_size = 1
    return obj


def random_batch(seed: int, b: int, dtype: torch.dtype) -> dict:
    """Per-token log-probs of a padded [chosen; rejected] batch in TRL's layout, and our (B,) views of them."""
    g = torch.Generator().manual_seed(seed)
    t_len = 12
    prompt_len = torch.randint(1, 5, (2 * b,), generator=g)
    completion_len = torch.randint(1, t_len - 4, (2 * b,), generator=g)
    pos = torch.arange(t_len)
    completion_mask = ((pos >= prompt_len[:, None]) & (pos < (prompt_len + completion_len)[:, None])).long()
    attention_mask = (pos < (prompt_len + completion_len)[:, None]).long()
    shift_mask = completion_mask[:, 1:]  # token j + 1 is predicted at j
    per_token = -torch.rand(2 * b, t_len - 1, generator=g, dtype=dtype) * 3 * shift_mask  # (2B, T-1), 0 off completion
    inputs = {
        "input_ids": torch.randint(3, 100, (2 * b, t_len), generator=g),
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "ref_chosen_logps": -torch.rand(b, generator=g, dtype=dtype) * 3 * completion_len[:b],
        "ref_rejected_logps": -torch.rand(b, generator=g, dtype=dtype) * 3 * completion_len[b:],
    }
    outputs = SimpleNamespace(
        log_probs=per_token,
        entropy=torch.rand(2 * b, t_len - 1, generator=g, dtype=dtype),
        mean_logits=torch.randn(2 * b, t_len - 1, generator=g, dtype=dtype),
        is_top1=torch.rand(2 * b, t_len - 1, generator=g) > 0.5,
    )
    logps = per_token.sum(1)
    chosen_tok, chosen_mask = per_token[:b], shift_mask[:b].bool()
    ours = {
        "policy_chosen": logps[:b],
        "policy_rejected": logps[b:],
        "ref_chosen": inputs["ref_chosen_logps"],
        "ref_rejected": inputs["ref_rejected_logps"],
        "chosen_lengths": completion_mask[:b].sum(1),
        "rejected_lengths": completion_mask[b:].sum(1),
        "chosen_nll": -(chosen_tok * chosen_mask).sum() / chosen_mask.sum(),
    }
    assert torch.equal(ours["chosen_lengths"], completion_len[:b])
    return {"inputs": inputs, "outputs": outputs, "ours": ours}


def trl_loss(trainer, data: dict) -> tuple[torch.Tensor, dict[str, float]]:
    def model(**kwargs):
        assert "labels" in kwargs and "completion_mask" not in kwargs
        return data["outputs"]

    loss = trainer._compute_loss(model, data["inputs"], return_outputs=False)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss, metrics


def assert_same(trl: tuple[torch.Tensor, dict[str, float]], ours: tuple[torch.Tensor, dict[str, torch.Tensor]]):
    trl_value, trl_metrics = trl
    our_value, our_metrics = ours
    torch.testing.assert_close(our_value, trl_value, atol=1e-6, rtol=1e-6)
    for k in TRL_METRICS:
        ours_mean = our_metrics[k].double().mean()
        torch.testing.assert_close(ours_mean, torch.tensor(trl_metrics[k], dtype=torch.float64), atol=1e-6, rtol=1e-6,
                                   msg=lambda m, k=k: f"{k}: {m}")


SEEDS = [0, 1, 2, 3, 4]
DTYPES = [torch.float32, torch.float64]


@needs_trl
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_trl_parity(trainer_cls: type, loss_type: str, beta: float, seed: int, dtype: torch.dtype) -> None:
    data = random_batch(seed, b=4, dtype=dtype)
    o = data["ours"]
    ours = dpo_loss(o["policy_chosen"], o["policy_rejected"], o["ref_chosen"], o["ref_rejected"], beta=beta,
                    loss_type=loss_type, chosen_lengths=o["chosen_lengths"], rejected_lengths=o["rejected_lengths"])
    assert_same(trl_loss(trl_stand_in(trainer_cls, beta, [loss_type], [1.0]), data), ours)


@needs_trl
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_trl_parity_rpo(trainer_cls: type, alpha: float, seed: int, dtype: torch.dtype) -> None:
    """RPO = TRL's loss_types ["sigmoid", "sft"] with weights [1, alpha]; NLL = mean per chosen token."""
    data = random_batch(seed, b=4, dtype=dtype)
    o = data["ours"]
    ours = dpo_loss(o["policy_chosen"], o["policy_rejected"], o["ref_chosen"], o["ref_rejected"], beta=0.1,
                    rpo_alpha=alpha, chosen_nll=o["chosen_nll"])
    assert_same(trl_loss(trl_stand_in(trainer_cls, 0.1, ["sigmoid", "sft"], [1.0, alpha]), data), ours)


@needs_trl
@pytest.mark.parametrize("seed", SEEDS)
def test_trl_parity_conservative_via_aot(trainer_cls: type, seed: int) -> None:
    """TRL 1.16's "sigmoid" ignores label_smoothing (and its "robust" is the unbiased loss of Chowdhury et al., a
    different function). The conservative form exists there only inside "aot", which sorts log-ratios across the
    batch: with one pair the sort is the identity and "aot" is exactly conservative DPO."""
    eps = 0.1
    data = random_batch(seed, b=1, dtype=torch.float64)
    o = data["ours"]
    ours = dpo_loss(o["policy_chosen"], o["policy_rejected"], o["ref_chosen"], o["ref_rejected"], beta=0.1,
                    label_smoothing=eps)
    assert_same(trl_loss(trl_stand_in(trainer_cls, 0.1, ["aot"], [1.0], label_smoothing=eps), data), ours)
    # And TRL's "sigmoid" with the same label_smoothing is plain DPO, not ours.
    plain = dpo_loss(o["policy_chosen"], o["policy_rejected"], o["ref_chosen"], o["ref_rejected"], beta=0.1)
    assert_same(trl_loss(trl_stand_in(trainer_cls, 0.1, ["sigmoid"], [1.0], label_smoothing=eps), data), plain)


@needs_trl
def test_trl_stand_in_reads_the_batch(trainer_cls: type) -> None:
    """The stand-in is live: TRL's loss moves with the reference log-probs it is given."""
    data = random_batch(0, b=4, dtype=torch.float64)
    a, _ = trl_loss(trl_stand_in(trainer_cls, 0.1, ["sigmoid"], [1.0]), data)
    data["inputs"]["ref_chosen_logps"] = data["inputs"]["ref_chosen_logps"] - 5.0
    b, _ = trl_loss(trl_stand_in(trainer_cls, 0.1, ["sigmoid"], [1.0]), data)
    assert b < a
