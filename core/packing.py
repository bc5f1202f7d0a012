"""Row layouts for preference pairs and the attention masks that go with them.

Two layouts, one batch format (built by :func:`collate_pairs`):

- **standard**: ``2B`` rows, ``[prompt | chosen]`` for the first ``B`` and ``[prompt | rejected]`` for the
  rest; a padding mask and plain causal attention.
- **shared prefix** (packed): one row per pair, ``[prompt | common | chosen_rest | rejected_rest]`` where
  ``common`` is the beginning both responses share (MCTS pairs branch after it). The prompt and the
  common part are computed once. Rejected tokens never see chosen tokens, and their positions restart
  where the shared part ends, so each branch sees exactly the context it would see alone.

Every row position carries a segment id (0 pad, 1 shared, 2 chosen branch, 3 rejected branch); the mask
is derived from segments on the device, so no (T, T) tensor travels through the data loader.

Log-probs are taken only where a response token is predicted: ``chosen_index[b, k]`` is the flat
position (``row * T + t``) whose hidden state predicts ``chosen_tokens[b, k]``. For the first token of
``rejected_rest`` that position is the last shared token, not the last chosen token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

PAD, SHARED, CHOSEN, REJECTED = 0, 1, 2, 3  # segment ids of a packed row


@dataclass
class TokenizedPair:
    """Token ids of one preference pair: the prompt once, then each response (ending with EOS)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    index: int = 0


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def collate_pairs(pairs: Sequence[TokenizedPair], pad_id: int, packed: bool, pad_to_multiple_of: int = 1) -> dict:
    """Pad and lay out a batch of pairs (see the module docstring for the format)."""
    b = len(pairs)
    rows: list[tuple[list[int], list[int], list[int]]] = []  # (ids, positions, segments)
    c_idx: list[list[int]] = []
    r_idx: list[list[int]] = []
    if packed:
        for p in pairs:
            n_p = len(p.prompt)
            n_c = common_prefix_len(p.chosen, p.rejected)
            if n_c == min(len(p.chosen), len(p.rejected)):
                n_c -= 1  # keep at least one token in each branch's rest
            n_c = max(n_c, 0)
            shared = p.prompt + p.chosen[:n_c]
            c_rest, r_rest = p.chosen[n_c:], p.rejected[n_c:]
            s = len(shared)
            ids = shared + c_rest + r_rest
            pos = list(range(s + len(c_rest))) + list(range(s, s + len(r_rest)))
            seg = [SHARED] * s + [CHOSEN] * len(c_rest) + [REJECTED] * len(r_rest)
            rows.append((ids, pos, seg))
            # Predictor of response token k sits one position before it in its own branch.
            c_idx.append(list(range(n_p - 1, s + len(c_rest) - 1)))
            start_r = s + len(c_rest)
            r_idx.append(list(range(n_p - 1, s - 1)) + [s - 1] + list(range(start_r, start_r + len(r_rest) - 1)))
    else:
        for p in pairs:
            n_p = len(p.prompt)
            ids = p.prompt + p.chosen
            rows.append((ids, list(range(len(ids))), [SHARED] * n_p + [CHOSEN] * len(p.chosen)))
            c_idx.append(list(range(n_p - 1, len(ids) - 1)))
        for p in pairs:
            n_p = len(p.prompt)
            ids = p.prompt + p.rejected
            rows.append((ids, list(range(len(ids))), [SHARED] * n_p + [REJECTED] * len(p.rejected)))
            r_idx.append(list(range(n_p - 1, len(ids) - 1)))

    t = max(len(r[0]) for r in rows)
    t = -(-t // pad_to_multiple_of) * pad_to_multiple_of
    n_rows = len(rows)
    input_ids = torch.full((n_rows, t), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, t), dtype=torch.long)
    segment_ids = torch.zeros((n_rows, t), dtype=torch.long)
    for i, (ids, pos, seg) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        position_ids[i, : len(ids)] = torch.tensor(pos)
        segment_ids[i, : len(ids)] = torch.tensor(seg)

    def targets(idx: list[list[int]], responses: list[list[int]], row_of: list[int]) -> tuple[Tensor, ...]:
        width = max(len(r) for r in responses)
        index = torch.zeros((b, width), dtype=torch.long)
        tokens = torch.full((b, width), pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.bool)
        for i, (ix, resp) in enumerate(zip(idx, responses, strict=True)):
            index[i, : len(ix)] = torch.tensor(ix) + row_of[i] * t
            tokens[i, : len(resp)] = torch.tensor(resp)
            mask[i, : len(resp)] = True
        return index, tokens, mask

    chosen_rows = list(range(b))
    rejected_rows = chosen_rows if packed else [b + i for i in range(b)]
    c_index, c_tokens, c_mask = targets(c_idx, [p.chosen for p in pairs], chosen_rows)
    r_index, r_tokens, r_mask = targets(r_idx, [p.rejected for p in pairs], rejected_rows)
    return {
        "input_ids": input_ids,  # (R, T), R = B packed, 2B standard
        "position_ids": position_ids,  # (R, T)
        "segment_ids": segment_ids,  # (R, T)
        "chosen_index": c_index,  # (B, Lc) flat positions into R*T
        "chosen_tokens": c_tokens,  # (B, Lc)
        "chosen_mask": c_mask,  # (B, Lc)
        "rejected_index": r_index,  # (B, Lr)
        "rejected_tokens": r_tokens,  # (B, Lr)
        "rejected_mask": r_mask,  # (B, Lr)
        "index": torch.tensor([p.index for p in pairs], dtype=torch.long),  # (B,) dataset rows
        # Equivalent tokens: prompt + response of both sequences, as if unpacked (for tokens/s).
        "num_tokens": torch.tensor(sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs)),
        "packed": packed,
    }
