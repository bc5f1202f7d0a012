"""Row layouts of preference pairs: exact layouts by hand, and packed forward == standard forward == plain HF."""

from __future__ import annotations

import random

import pytest
import torch

from core.packing import CHOSEN, PAD, REJECTED, SHARED, TokenizedPair, collate_pairs, common_prefix_len
from lightning_modules.dpo.packing import packed_attention_mask

PAIR = TokenizedPair(prompt=[1, 2, 3], chosen=[4, 5, 9], rejected=[4, 6, 9, 9], index=7)
S, C, R, P = SHARED, CHOSEN, REJECTED, PAD


def lists(batch: dict, key: str) -> list:
    return batch[key].tolist()


@pytest.mark.parametrize(
    ("a", "b", "n"),
    [([4, 5, 9], [4, 6, 9, 9], 1), ([1, 2], [1, 2, 3], 2), ([1], [2], 0), ([], [1], 0), ([3, 3], [3, 3], 2)],
)
def test_common_prefix_len(a: list[int], b: list[int], n: int) -> None:
    assert common_prefix_len(a, b) == n


# ------------------------------------------------------------------------------------------- packed layout
def test_packed_layout_by_hand() -> None:
    batch = collate_pairs([PAIR], pad_id=0, packed=True)
    # shared = prompt + common response start [4]; then chosen rest [5, 9]; then rejected rest [6, 9, 9]
    assert lists(batch, "input_ids") == [[1, 2, 3, 4, 5, 9, 6, 9, 9]]
    # rejected positions restart where the shared part ends (4), as if chosen were not there
    assert lists(batch, "position_ids") == [[0, 1, 2, 3, 4, 5, 4, 5, 6]]
    assert lists(batch, "segment_ids") == [[S, S, S, S, C, C, R, R, R]]
    # chosen 4 <- 3 (pos 2), 5 <- 4 (pos 3), 9 <- 5 (pos 4)
    assert lists(batch, "chosen_index") == [[2, 3, 4]]
    assert lists(batch, "chosen_tokens") == [[4, 5, 9]]
    assert lists(batch, "chosen_mask") == [[True, True, True]]
    # rejected 4 <- 3 (pos 2), 6 <- the shared 4 (pos 3, not the chosen 9), 9 <- 6 (pos 6), 9 <- 9 (pos 7)
    assert lists(batch, "rejected_index") == [[2, 3, 6, 7]]
    assert lists(batch, "rejected_tokens") == [[4, 6, 9, 9]]
    assert lists(batch, "rejected_mask") == [[True, True, True, True]]
    assert lists(batch, "index") == [7]
    assert batch["num_tokens"].item() == 2 * 3 + 3 + 4
    assert batch["packed"] is True


def test_packed_layout_padded_batch_by_hand() -> None:
    other = TokenizedPair(prompt=[7], chosen=[8, 2], rejected=[9, 2], index=3)
    batch = collate_pairs([PAIR, other], pad_id=0, packed=True, pad_to_multiple_of=4)  # T = 9 -> 12
    assert lists(batch, "input_ids") == [[1, 2, 3, 4, 5, 9, 6, 9, 9, 0, 0, 0], [7, 8, 2, 9, 2, 0, 0, 0, 0, 0, 0, 0]]
    assert lists(batch, "position_ids") == [[0, 1, 2, 3, 4, 5, 4, 5, 6, 0, 0, 0], [0, 1, 2, 1, 2, 0, 0, 0, 0, 0, 0, 0]]
    assert lists(batch, "segment_ids") == [[S, S, S, S, C, C, R, R, R, P, P, P], [S, C, C, R, R, P, P, P, P, P, P, P]]
    # flat positions: row 1 starts at 12; entries past a response are 0 and masked out
    assert lists(batch, "chosen_index") == [[2, 3, 4], [12, 13, 0]]
    assert lists(batch, "chosen_tokens") == [[4, 5, 9], [8, 2, 0]]
    assert lists(batch, "chosen_mask") == [[True, True, True], [True, True, False]]
    assert lists(batch, "rejected_index") == [[2, 3, 6, 7], [12, 15, 0, 0]]
    assert lists(batch, "rejected_tokens") == [[4, 6, 9, 9], [9, 2, 0, 0]]
    assert lists(batch, "rejected_mask") == [[True] * 4, [True, True, False, False]]
    assert lists(batch, "index") == [7, 3]
    assert batch["num_tokens"].item() == (2 * 3 + 3 + 4) + (2 * 1 + 2 + 2)


def test_packed_layout_pad_id_and_prefix_responses() -> None:
    # chosen is a prefix of rejected: one common token stays in the chosen branch so both branches are non-empty
    pair = TokenizedPair(prompt=[1, 2], chosen=[4, 5], rejected=[4, 5, 6])
    batch = collate_pairs([pair], pad_id=99, packed=True, pad_to_multiple_of=8)
    assert lists(batch, "input_ids") == [[1, 2, 4, 5, 5, 6, 99, 99]]
    assert lists(batch, "position_ids") == [[0, 1, 2, 3, 3, 4, 0, 0]]
    assert lists(batch, "segment_ids") == [[S, S, S, C, R, R, P, P]]
    assert lists(batch, "chosen_index") == [[1, 2]]
    assert lists(batch, "rejected_index") == [[1, 2, 4]]


# ----------------------------------------------------------------------------------------- standard layout
def test_standard_layout_by_hand() -> None:
    batch = collate_pairs([PAIR], pad_id=0, packed=False)
    assert lists(batch, "input_ids") == [[1, 2, 3, 4, 5, 9, 0], [1, 2, 3, 4, 6, 9, 9]]
    assert lists(batch, "position_ids") == [[0, 1, 2, 3, 4, 5, 0], [0, 1, 2, 3, 4, 5, 6]]
    assert lists(batch, "segment_ids") == [[S, S, S, C, C, C, P], [S, S, S, R, R, R, R]]
    assert lists(batch, "chosen_index") == [[2, 3, 4]]
    assert lists(batch, "chosen_tokens") == [[4, 5, 9]]
    assert lists(batch, "chosen_mask") == [[True, True, True]]
    assert lists(batch, "rejected_index") == [[7 + 2, 7 + 3, 7 + 4, 7 + 5]]  # row 1 of width 7
    assert lists(batch, "rejected_tokens") == [[4, 6, 9, 9]]
    assert lists(batch, "rejected_mask") == [[True, True, True, True]]
    assert lists(batch, "index") == [7]
    assert batch["num_tokens"].item() == 13
    assert batch["packed"] is False


def test_standard_layout_two_pairs() -> None:
    other = TokenizedPair(prompt=[7], chosen=[8, 2], rejected=[9, 2], index=3)
    batch = collate_pairs([PAIR, other], pad_id=0, packed=False, pad_to_multiple_of=4)  # T = 7 -> 8
    assert batch["input_ids"].shape == (4, 8)
    assert lists(batch, "input_ids")[1] == [7, 8, 2, 0, 0, 0, 0, 0]
    assert lists(batch, "input_ids")[3] == [7, 9, 2, 0, 0, 0, 0, 0]
    assert lists(batch, "chosen_index") == [[2, 3, 4], [8, 9, 0]]
    assert lists(batch, "rejected_index") == [[18, 19, 20, 21], [24, 25, 0, 0]]
    assert batch["num_tokens"].item() == 13 + 6


def test_index_picks_the_token_before_each_target() -> None:
    """For every layout, the input token just before each target (in its own branch) is the right context."""
    rng = random.Random(0)
    pairs = random_pairs(rng, 12)
    for packed in (False, True):
        b = collate_pairs(pairs, pad_id=0, packed=packed, pad_to_multiple_of=8)
        flat_ids, flat_pos = b["input_ids"].reshape(-1), b["position_ids"].reshape(-1)
        for i, p in enumerate(pairs):
            for side, resp in (("chosen", p.chosen), ("rejected", p.rejected)):
                idx = b[f"{side}_index"][i][: len(resp)]
                seq = p.prompt + resp
                assert flat_ids[idx].tolist() == seq[len(p.prompt) - 1 : -1]
                assert flat_pos[idx].tolist() == list(range(len(p.prompt) - 1, len(seq) - 1))
                assert b[f"{side}_tokens"][i][: len(resp)].tolist() == resp
                assert b[f"{side}_mask"][i].sum().item() == len(resp)


# ------------------------------------------------------------------------------------------- attention mask
MASK_9 = [
    # keys: S  S  S  S  C  C  R  R  R
    [1, 0, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0, 0, 0, 0, 0],
    [1, 1, 1, 1, 0, 0, 0, 0, 0],
    [1, 1, 1, 1, 1, 0, 0, 0, 0],  # chosen 5
    [1, 1, 1, 1, 1, 1, 0, 0, 0],  # chosen 9
    [1, 1, 1, 1, 0, 0, 1, 0, 0],  # rejected 6: shared prefix only, then itself
    [1, 1, 1, 1, 0, 0, 1, 1, 0],
    [1, 1, 1, 1, 0, 0, 1, 1, 1],
]


def test_packed_attention_mask_by_hand() -> None:
    seg = collate_pairs([PAIR], pad_id=0, packed=True)["segment_ids"]
    mask = packed_attention_mask(seg)
    assert mask.shape == (1, 1, 9, 9) and mask.dtype == torch.bool
    assert mask[0, 0].int().tolist() == MASK_9


def test_packed_attention_mask_padding() -> None:
    seg = collate_pairs([PAIR], pad_id=0, packed=True, pad_to_multiple_of=4)["segment_ids"]  # T = 12
    m = packed_attention_mask(seg)[0, 0].int().tolist()
    assert [row[:9] for row in m[:9]] == MASK_9
    assert [row[9:] for row in m[:9]] == [[0, 0, 0]] * 9  # nobody attends to padding
    # padding queries see the real tokens before them and themselves (never an all-masked row)
    assert m[9] == [1] * 9 + [1, 0, 0]
    assert m[10] == [1] * 9 + [0, 1, 0]
    assert m[11] == [1] * 9 + [0, 0, 1]


def test_packed_attention_mask_all_padding_row_has_open_diagonal() -> None:
    seg = torch.tensor([[1, 2, 3, 0], [0, 0, 0, 0]])
    m = packed_attention_mask(seg)
    assert m[1, 0].int().tolist() == torch.eye(4, dtype=torch.int).tolist()
    assert m[0, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]]


# ------------------------------------------------------------------------------- forward: packed == standard
def random_pairs(rng: random.Random, n: int) -> list[TokenizedPair]:
    """Pairs of varied lengths, including shared response beginnings and one response a prefix of the other."""

    def toks(k: int) -> list[int]:
        return [rng.randrange(3, 4096) for _ in range(k)]

    pairs = []
    for i in range(n):
        prompt = [1, *toks(rng.randint(0, 9))]
        kind = i % 6
        if kind == 0:  # independent responses
            chosen, rejected = toks(rng.randint(1, 8)) + [2], toks(rng.randint(1, 8)) + [2]
        elif kind == 1:  # shared beginning (an MCTS branch point)
            common = toks(rng.randint(1, 6))
            chosen, rejected = common + toks(rng.randint(1, 5)) + [2], common + toks(rng.randint(1, 5)) + [2]
        elif kind == 2:  # chosen is a prefix of rejected
            rejected = toks(rng.randint(2, 9))
            chosen = rejected[: rng.randint(1, len(rejected) - 1)]
        elif kind == 3:  # rejected is a prefix of chosen
            chosen = toks(rng.randint(2, 9))
            rejected = chosen[: rng.randint(1, len(chosen) - 1)]
        elif kind == 4:  # one-token responses
            chosen, rejected = toks(1), toks(1)
        else:  # same start, differ only at the last token
            common = toks(rng.randint(1, 6))
            chosen, rejected = common + [5], common + [6]
        if chosen == rejected:
            rejected = rejected + [2]
        pairs.append(TokenizedPair(prompt, chosen, rejected, index=i))
    return pairs


def plain_hf_logps(policy: torch.nn.Module, pair: TokenizedPair) -> tuple[float, float]:
    """The standard two-sequence computation: full forward of prompt + response, log_softmax of HF logits.

    The log-softmax and the sum run in float64, so this is the float32 forward's exact answer."""
    out = []
    for resp in (pair.chosen, pair.rejected):
        ids = torch.tensor([pair.prompt + resp])
        logits = policy(input_ids=ids).logits[0].double()  # (T, V)
        logp = torch.log_softmax(logits, dim=-1)
        n_p = len(pair.prompt)
        out.append(sum(logp[n_p - 1 + k, tok] for k, tok in enumerate(resp)))
    return tuple(torch.stack(out).tolist())


def _module(attention: str):
    from lightning_modules import DPO

    module = DPO(backbone="tiny-llama", attention=attention)
    module.policy.float().eval()
    return module


# Eager attention adds its mask to the scores, so it gets the additive (0 / finfo.min) form of the same mask.
@pytest.fixture(scope="module", params=["sdpa", "eager"])
def module(request):
    return _module(request.param)


@pytest.mark.parametrize("pad_to_multiple_of", [1, 8])
def test_packed_forward_equals_standard(module, pad_to_multiple_of: int) -> None:
    pairs = random_pairs(random.Random(1), 12)
    packed = collate_pairs(pairs, pad_id=0, packed=True, pad_to_multiple_of=pad_to_multiple_of)
    standard = collate_pairs(pairs, pad_id=0, packed=False, pad_to_multiple_of=pad_to_multiple_of)
    assert packed["input_ids"].numel() < standard["input_ids"].numel()
    with torch.no_grad():
        a = module.sequence_logps(module.policy, packed)
        b = module.sequence_logps(module.policy, standard)
    for k in ("chosen", "rejected", "chosen_nll"):
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    for k in ("chosen_lengths", "rejected_lengths"):
        torch.testing.assert_close(a[k], b[k])
    assert a["chosen_lengths"].tolist() == [len(p.chosen) for p in pairs]
    assert a["rejected_lengths"].tolist() == [len(p.rejected) for p in pairs]


def test_packed_and_standard_equal_plain_hf_forward(module) -> None:
    pairs = random_pairs(random.Random(2), 8)
    with torch.no_grad():
        expected = torch.tensor([plain_hf_logps(module.policy, p) for p in pairs], dtype=torch.float64)  # (B, 2)
        n = sum(len(p.chosen) for p in pairs)
        for packed in (True, False):
            got = module.sequence_logps(module.policy, collate_pairs(pairs, pad_id=0, packed=packed))
            assert got["chosen"].dtype == torch.float32
            # sums of up to ~10 float32 log-probs near -8: allow a few float32 ulps of the sum on top of 1e-5
            torch.testing.assert_close(got["chosen"].double(), expected[:, 0], atol=1e-5, rtol=1e-6)
            torch.testing.assert_close(got["rejected"].double(), expected[:, 1], atol=1e-5, rtol=1e-6)
            # chosen NLL = mean negative log-prob per chosen token over the batch
            torch.testing.assert_close(got["chosen_nll"].double(), -expected[:, 0].sum() / n, atol=1e-5, rtol=0)


def test_packed_gradients_equal_standard(module) -> None:
    pairs = random_pairs(random.Random(3), 6)
    grads = []
    for packed in (True, False):
        module.policy.zero_grad()
        out = module.sequence_logps(module.policy, collate_pairs(pairs, pad_id=0, packed=packed))
        (out["chosen"].sum() - 0.5 * out["rejected"].sum() + out["chosen_nll"]).backward()
        grads.append({n: p.grad.clone() for n, p in module.policy.named_parameters() if p.grad is not None})
    module.policy.zero_grad()
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 5
    for name in grads[0]:
        torch.testing.assert_close(
            grads[0][name], grads[1][name], atol=1e-5, rtol=0, msg=lambda m, n=name: f"{n}: {m}"
        )
    assert any(g.abs().sum() > 0 for g in grads[0].values())


def test_rejected_does_not_see_chosen(module) -> None:
    """Changing a chosen-branch token leaves the packed rejected log-prob unchanged (and changes chosen's)."""
    pair = TokenizedPair(prompt=[1, 10, 11], chosen=[20, 21, 22, 2], rejected=[20, 30, 31, 2])
    other = TokenizedPair(prompt=pair.prompt, chosen=[20, 21, 40, 2], rejected=pair.rejected)
    with torch.no_grad():
        a = module.sequence_logps(module.policy, collate_pairs([pair], pad_id=0, packed=True))
        b = module.sequence_logps(module.policy, collate_pairs([other], pad_id=0, packed=True))
    torch.testing.assert_close(a["rejected"], b["rejected"], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(a["chosen"], b["chosen"])


def test_flex_attention_block_mask_matches_sdpa() -> None:
    """The FlexAttention path (a BlockMask from segment ids) gives the SDPA path's log-probs.

    FlexAttention has no backward on CPU, so this checks the forward; training with it is for GPUs.
    """
    from core.packing import TokenizedPair, collate_pairs
    from lightning_modules import DPO

    pairs = [TokenizedPair([1, 5, 6, 7, 8], [9, 10, 11, 2], [9, 12, 2], 0),
             TokenizedPair([1, 5, 6], [20, 21, 2], [22, 23, 24, 25, 2], 1)]
    sdpa = DPO(backbone="tiny-llama", attention="sdpa", reference="precomputed")
    flex = DPO(backbone="tiny-llama", attention="flex_attention", reference="precomputed")
    flex.policy.load_state_dict(sdpa.policy.state_dict())
    batch = collate_pairs(pairs, pad_id=0, packed=True)
    with torch.no_grad():
        a = sdpa.sequence_logps(sdpa.policy, batch)
        b = flex.sequence_logps(flex.policy, batch)
    for side in ("chosen", "rejected"):
        torch.testing.assert_close(a[side], b[side], atol=1e-5, rtol=0)
