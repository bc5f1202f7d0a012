"""MSD's weighting schemes (one object per ``weighting`` value) against hand-computed weights; the factory; the
learned scheme's checkpoint state."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace
from typing import get_args

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from core.errors import ConfigError
from lightning_modules.msd.module import MSD
from lightning_modules.msd.teacher import TeacherOutputs
from lightning_modules.msd.weighting import (
    Dataset,
    Instance,
    Learned,
    PlainKD,
    Uniform,
    WeightingName,
    WeightingScheme,
    make_weighting,
)

pytestmark = pytest.mark.usefixtures("one_thread")
LN3 = math.log(3.0)
# Two rows, two classes. full: p = (1/4, 3/4) and (3/4, 1/4); image only: (1/2, 1/2); text only: (3/4, 1/4) twice.
FULL = torch.tensor([[0.0, LN3], [LN3, 0.0]])
IMAGE_ONLY = torch.zeros(2, 2)
TEXT_ONLY = torch.tensor([[LN3, 0.0], [LN3, 0.0]])
TEACHER = torch.stack([FULL, IMAGE_ONLY, TEXT_ONLY])  # (3, B, L)
LABELS = torch.tensor([1, 0])
# KL saliency: image = KL(p || text only), text = KL(p || image only)
#   row 0: image 1/4 ln(1/3) + 3/4 ln 3 = ln(3)/2; text 1/4 ln(1/2) + 3/4 ln(3/2) = C
#   row 1: image 0 (text only predicts as the full input); text 3/4 ln(3/2) + 1/4 ln(1/2) = C
C = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
KL = torch.tensor([[LN3 / 2, C], [0.0, C]])
# Drop of the true class's probability: row 0 (y=1) image 3/4 - 1/4, text 3/4 - 1/2; row 1 (y=0) 0, 3/4 - 1/2
PROB_DROP = torch.tensor([[0.5, 0.25], [0.0, 0.25]])


def close(actual: torch.Tensor, expected: list[list[float]] | torch.Tensor) -> None:
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float32), atol=1e-6, rtol=0)


def test_plain_kd_has_no_modality_terms_but_logs_the_saliency() -> None:
    scheme = PlainKD("kl")
    saliency, features = scheme.features(TEACHER, LABELS, False)
    close(saliency, KL)
    assert scheme.weights(features) is None and not scheme.modality_terms and not scheme.manual_optimization


def test_uniform_weights_are_one() -> None:
    saliency, features = Uniform("prob_drop").features(TEACHER, LABELS, False)
    close(saliency, PROB_DROP)
    close(Uniform().weights(features), [[1.0, 1.0], [1.0, 1.0]])


def test_instance_weights_are_a_tempered_softmax_of_the_saliencies() -> None:
    scheme = Instance("kl", temperature=0.5)
    saliency, features = scheme.features(TEACHER, LABELS, False)
    close(features, KL)
    # 2 * softmax(s / 0.5): row 0 (ln 3, 2C), row 1 (0, 2C)
    e = math.exp(2 * C)
    close(scheme.weights(features), [[2 * 3 / (3 + e), 2 * e / (3 + e)], [2 / (1 + e), 2 * e / (1 + e)]])
    close(Instance("kl", 1.0).weights(torch.tensor([[0.3, 0.3]])), [[1.0, 1.0]])  # equal saliencies: (1, 1)


def test_dataset_weights_come_from_the_mean_training_saliency() -> None:
    # Four training rows: the two above and two copies of the second, at indices 0, 1, 3 and 5 of a 6-row cache.
    logits = torch.zeros(6, 3, 2)
    for index, row in ((0, 0), (1, 1), (3, 1), (5, 1)):
        logits[index] = TEACHER[:, row]
    examples = [SimpleNamespace(index=i, label=int(LABELS[r])) for i, r in ((0, 0), (1, 1), (3, 1), (5, 1))]
    dm = SimpleNamespace(datasets={"train": SimpleNamespace(examples=examples)}, multi_label=False)
    scheme = Dataset("kl")
    assert scheme.needs_training_outputs
    with pytest.raises(ValueError, match="dataset"):  # before setup there is no mean
        scheme.weights(KL)
    scheme.setup(dm, TeacherOutputs(logits), 0, 1)
    mean = [LN3 / 8, C]  # image: (ln(3)/2 + 0 + 0 + 0) / 4; text: C on every row
    close(scheme.mean_saliency, mean)
    w = [2 * mean[0] / sum(mean), 2 * mean[1] / sum(mean)]
    close(scheme.weights(torch.zeros(3, 2)), [w, w, w])  # the same for every instance, whatever its saliency
    close(Dataset(mean=torch.tensor([-0.1, 0.0])).weights(KL), [[1.0, 1.0], [1.0, 1.0]])  # none positive: uniform


def learned(**kwargs: object) -> Learned:
    return Learned(**{"seed": 7, **kwargs})  # type: ignore[arg-type]


def test_learned_weights_come_from_the_weight_network_on_both_saliencies() -> None:
    scheme = learned(saliency="prob_drop", every=3)
    saliency, features = scheme.features(TEACHER, LABELS, False)
    close(features, torch.cat([KL, PROB_DROP], dim=-1))  # (B, 2M): kl (image, text), prob_drop (image, text)
    close(saliency, PROB_DROP)  # the configured kind, logged
    assert torch.equal(scheme.weights(features), torch.ones(2, 2))  # zero-initialised last layer: uniform
    with torch.no_grad():
        scheme.net.mlp[-1].bias.copy_(torch.tensor([LN3, 0.0]))
    weights = scheme.weights(features)  # 2 * sigmoid(ln 3) = 3/2, 2 * sigmoid(0) = 1
    close(weights, [[1.5, 1.0], [1.5, 1.0]])
    assert not weights.requires_grad  # the student's step sees them detached
    assert [b for b in range(7) if scheme.meta_due(b)] == [0, 3, 6]
    assert scheme.manual_optimization and not PlainKD().meta_due(0)


def test_factory_builds_one_scheme_per_name_and_refuses_others() -> None:
    kinds = {"none": PlainKD, "uniform": Uniform, "dataset": Dataset, "instance": Instance, "learned": Learned}
    assert set(get_args(WeightingName)) == set(kinds)
    for name, kind in kinds.items():
        assert type(make_weighting(name)) is kind
    scheme = make_weighting("instance", "prob_drop", weight_temperature=0.5)
    assert (scheme.saliency, scheme.temperature) == ("prob_drop", 0.5)
    a, b = (make_weighting("learned", meta_lr=0.1, meta_every=2, weight_net_hidden=5, seed=3) for _ in range(2))
    assert (a.lr, a.every, a.net.mlp[0].out_features) == (0.1, 2, 5)
    assert all(torch.equal(p, q) for p, q in zip(a.net.parameters(), b.net.parameters(), strict=True))  # seeded
    with pytest.raises(ConfigError, match=r"weighting must be one of none, uniform, dataset, instance, learned; "
                                          r"got 'median'"):
        make_weighting("median")


def heldout_dm() -> SimpleNamespace:
    """Six held-out rows in shuffled batches of two (three per pass)."""
    rows = torch.arange(6)
    loader = DataLoader(rows, batch_size=2, sampler=DistributedSampler(rows, num_replicas=1, rank=0, seed=0))
    return SimpleNamespace(datasets={"heldout": rows}, heldout_dataloader=lambda rank, world_size: loader)


def test_learned_state_round_trips_through_a_checkpoint() -> None:
    a = learned()
    a.setup(heldout_dm(), None, 0, 1)
    drawn = [a.next_heldout() for _ in range(4)]
    for p in a.net.parameters():
        p.grad = torch.ones_like(p)
    a.meta_optimizer().step()
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)  # as Lightning writes it, under the key `msd_meta`
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) == {"optimizer", "heldout_used"} and state["heldout_used"] == 4

    b = learned()
    b.load_state_dict(state)
    assert b.state_dict()["optimizer"] == state["optimizer"]  # kept until its optimiser is made
    b.setup(heldout_dm(), None, 0, 1)
    restored = b.meta_optimizer().state_dict()
    assert restored["state"][0]["step"] == 1
    for key in ("exp_avg", "exp_avg_sq"):
        assert all(torch.equal(restored["state"][i][key], a.optimizer.state_dict()["state"][i][key])
                   for i in restored["state"])
    # The held-out batches continue where they stopped: the 5th and 6th batches of an uninterrupted draw.
    assert torch.equal(b.next_heldout(), a.next_heldout()) and torch.equal(b.next_heldout(), a.next_heldout())
    assert b.heldout_used == 6 and not torch.equal(drawn[0], drawn[3])  # the second pass is reshuffled
    b.load_state_dict({})  # a checkpoint written without the learned scheme
    assert (b.heldout_used, b.optimizer, b.state_dict()["optimizer"]) == (0, None, None)


@pytest.mark.parametrize("name", ["none", "uniform", "dataset", "instance"])
def test_stateless_schemes_keep_nothing(name: str) -> None:
    scheme = make_weighting(name)
    assert scheme.state_dict() == {} and scheme.net is None
    scheme.load_state_dict({"optimizer": None, "heldout_used": 3})  # ignored
    assert isinstance(scheme, WeightingScheme)


def test_msd_registers_the_learned_network_and_checkpoints_its_state() -> None:
    """The module wires the scheme in: its network as ``weight_net.*`` parameters, its state as ``msd_meta``."""
    model = MSD(weighting="learned")
    assert not model.automatic_optimization and isinstance(model.scheme, Learned)
    assert {k for k in model.state_dict() if k.startswith("weight_net.")} == {
        "weight_net.mlp.0.weight", "weight_net.mlp.0.bias", "weight_net.mlp.2.weight", "weight_net.mlp.2.bias"}
    model.scheme.load_state_dict({"optimizer": None, "heldout_used": 5})
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    assert checkpoint["msd_meta"] == {"optimizer": None, "heldout_used": 5}
    resumed = MSD(weighting="learned")
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.scheme.heldout_used == 5
    plain = MSD(weighting="instance")
    assert plain.weight_net is None and plain.automatic_optimization and not isinstance(plain.scheme, Learned)
    checkpoint = {}
    plain.on_save_checkpoint(checkpoint)
    assert "msd_meta" not in checkpoint
