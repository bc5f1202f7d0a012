"""CriticRM: a causal LM that writes a critique, and a reward head that scores (prompt, response, critique).

Yu et al. 2025 (NAACL), "Self-Generated Critiques Boost Reward Modeling for Language Models". One model, two heads:
the language-model head is kept and learns to write critiques (NLL on critique tokens only), a scalar reward head
(an MLP on the last non-pad token's hidden state) learns the preference with Bradley-Terry; the two losses are
mixed with a scheduled weight (``loss.py``). At inference the model writes ``num_critiques`` critiques of
each response, scores each (prompt, response, critique) and averages the rewards (inference-time scaling).

With ``use_critiques=False`` the same module is the plain scalar reward model on (prompt, response): the baseline.
Batches come from :class:`~datamodules.reward.RewardDataModule`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric

from core.backbones import (
    Dtype,
    LoraSpec,
    apply_lora,
    build_causal_lm,
    check_model_name,
    hidden_and_logits,
    load_tokenizer,
    unwrap_peft,
)
from core.chat import DEFAULT_CRITIQUE_INSTRUCTION
from core.checkpointing import TrainableOnlyCheckpoints
from core.errors import ConfigError
from core.losses import global_token_mean, response_nll
from core.optim import OptimSpec, configure_adamw
from core.strategies import Shardable
from lightning_modules.critic_rm.loss import Schedule, critic_rm_loss
from lightning_modules.critic_rm.loss import critique_weight as scheduled_weight
from lightning_modules.critic_rm.metrics import PairwiseAccuracy, RewardBenchAccuracy


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of each row's last real token, for left or right padding: (N, T) -> (N,)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)  # (T,)
    return (attention_mask.long() * (positions + 1)).argmax(-1)  # (N,): the largest position holding a 1


class RewardHead(nn.Module):
    """Scalar reward from a hidden state: Linear -> GELU -> Linear (``hidden=0``: a single Linear)."""

    def __init__(self, d_model: int, hidden: int = 0) -> None:
        super().__init__()
        if hidden > 0:
            self.net: nn.Module = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, 1))
        else:
            self.net = nn.Linear(d_model, 1)

    def forward(self, h: Tensor) -> Tensor:  # (N, H) -> (N,)
        return self.net(h).squeeze(-1)

    @property
    def offset(self) -> nn.Parameter:
        """The bias of the last layer: a constant added to every reward."""
        last = self.net[-1] if isinstance(self.net, nn.Sequential) else self.net
        return last.bias


class CriticRM(Shardable, TrainableOnlyCheckpoints, LightningModule):
    """Critic-RM (joint critique generation + reward), or the plain reward model with ``use_critiques=False``.

    Args:
        backbone, dtype, trust_remote_code, attention, lora_*, gradient_checkpointing, init_seed: as for
            :class:`~lightning_modules.dpo.module.DPO` (with LoRA the adapter and the reward head train).
        use_critiques: False = the plain reward model (no critique, no LM loss).
        critique_weight, critique_weight_end, critique_schedule: lambda(t) of the loss, from ``critique_weight`` to
            ``critique_weight_end`` (``constant`` keeps the first).
        centering: weight of the reward-centering term (0 = off).
        reward_head_hidden: width of the reward MLP's hidden layer (0 = linear head; None = the model width).
        critique_instruction: the user turn that asks for a critique (the datamodule uses the same by default).
        num_critiques: critiques written per response at evaluation / prediction; the rewards are averaged.
        max_critique_tokens: tokens of a generated critique.
        critique_temperature, critique_top_p: sampling of generated critiques (0 = greedy; needs
            ``num_critiques == 1``).
        val_generate: validation accuracy from self-written critiques (the inference path); False reads the
            validation file's critiques (teacher-forced, which leaks the label into the critique).
        lr, weight_decay, warmup_steps, lr_schedule: AdamW and its schedule (``core/optim.py``).
    """

    def __init__(
        self,
        backbone: str = "tiny-llama",
        dtype: Dtype | None = None,
        trust_remote_code: bool = False,
        attention: Literal["sdpa", "eager"] = "sdpa",
        lora_r: int = 0,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | str = "all-linear",
        use_critiques: bool = True,
        critique_weight: float = 0.9,
        critique_weight_end: float = 0.5,
        critique_schedule: Schedule = "linear",
        centering: float = 0.0,
        reward_head_hidden: int | None = None,
        critique_instruction: str = DEFAULT_CRITIQUE_INSTRUCTION,
        num_critiques: int = 1,
        max_critique_tokens: int = 48,
        critique_temperature: float = 0.0,
        critique_top_p: float = 1.0,
        val_generate: bool = True,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "linear", "cosine"] = "constant",
        gradient_checkpointing: bool = False,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        try:
            scheduled_weight(0, 1, critique_schedule, critique_weight, critique_weight_end)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if num_critiques < 1 or max_critique_tokens < 1:
            raise ConfigError(f"num_critiques and max_critique_tokens must be >= 1, got {num_critiques}, "
                              f"{max_critique_tokens}")
        if num_critiques > 1 and critique_temperature <= 0:
            raise ConfigError("num_critiques > 1 needs critique_temperature > 0 (greedy decoding repeats one critique)")
        if critique_temperature < 0 or not 0 < critique_top_p <= 1:
            raise ConfigError("need critique_temperature >= 0 and 0 < critique_top_p <= 1, got "
                              f"{critique_temperature}, {critique_top_p}")
        if centering < 0:
            raise ConfigError(f"centering must be >= 0, got {centering}")
        check_model_name(backbone)
        self.tokenizer = load_tokenizer(backbone, trust_remote_code=trust_remote_code)
        self.optim = OptimSpec(lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, schedule=lr_schedule)
        policy = build_causal_lm(backbone, dtype=dtype, trust_remote_code=trust_remote_code,
                                 attn_implementation=attention, seed=init_seed)
        if gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        d_model = policy.config.hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed + 1)
            self.reward_head = RewardHead(d_model, d_model if reward_head_hidden is None else reward_head_hidden)
        lora = LoraSpec(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=lora_target_modules)
        self.policy = apply_lora(policy, lora)
        self.val_loss = nn.ModuleDict({k: MeanMetric() for k in ("loss", "bt", "critique")})
        self.val_accuracy = PairwiseAccuracy()
        self.test_accuracy: RewardBenchAccuracy | None = None
        self._total_steps: int | None = 0  # the run's optimizer steps; None: not read yet (see on_fit_start)

    # ------------------------------------------------------------------------------------------------ network
    def _inner(self) -> nn.Module:
        return unwrap_peft(self.policy)

    def hidden_and_logits(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None,
                          logits_at: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """One pass of the LM: last-layer hidden states (N, T, H) and the LM head's logits (P, V) at the flat
        positions ``logits_at`` (P,) of the (N*T) grid only (None: no logits). Positions come from the mask when
        not given (left padding too). Under FSDP2 this is a forward of the sharded model (weights gathered around
        it): the decoder and the head are never called directly."""
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (N, T)
        return hidden_and_logits(self._inner(), logits_at, input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids)

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """Last-layer hidden states (N, T, H); positions from the mask when not given (left padding too)."""
        return self.hidden_and_logits(input_ids, attention_mask, position_ids)[0]

    def _sharded(self) -> bool:
        """The policy is sharded by FSDP2 over more than one process (its passes are collectives)."""
        from torch.distributed.fsdp import FSDPModule

        return (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
                and any(isinstance(m, FSDPModule) for m in self.policy.modules()))

    def rewards(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """The reward head on each row's last real token: (N, T, H), (N, T) -> (N,)."""
        last = last_token_index(attention_mask)  # (N,)
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (N, H)
        return self.reward_head(h.to(next(self.reward_head.parameters()).dtype))

    def critique_nll(self, hidden: Tensor | None, batch: dict[str, Any], logits: Tensor | None = None) -> Tensor:
        """Token-mean NLL of the critique tokens, from their ``logits`` (M, V) (:meth:`hidden_and_logits` at the flat
        positions of ``critique_mask``) or, without them, from ``hidden`` (N, T, H) through the LM head (a direct
        call: unsharded models only)."""
        mask = batch["critique_mask"]  # (N, T)
        if logits is None:
            logits = self._inner().get_output_embeddings()(hidden[mask])  # (M, V): critique predictions only
        return response_nll(logits, batch["targets"][mask], mask.new_ones(logits.shape[0]))[0]

    # ------------------------------------------------------------------------------------------------- loss
    def current_critique_weight(self) -> float:
        h = self.hparams
        if not h.use_critiques:
            return 0.0
        if self._total_steps is None:
            self._total_steps = int(self.trainer.estimated_stepping_batches)
        return scheduled_weight(self.global_step, self._total_steps, h.critique_schedule, h.critique_weight,
                                  h.critique_weight_end)

    def _loss(self, batch: dict[str, Any], global_batch: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of ``batch``. ``global_batch`` (training: every rank calls it in step): the critique NLL is the
        token mean over all ranks' critiques (each rank returns its share, see
        :func:`~core.losses.global_token_mean`), and it counts only when every rank's batch has
        critiques, as for one process on the whole global batch."""
        teacher = bool(self.hparams.use_critiques and batch["has_critiques"])
        mask = batch["critique_mask"] if teacher else None  # (2B, T)
        tokens = mask.sum() if teacher else None
        if global_batch and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flag = torch.tensor([float(teacher)], device=batch["input_ids"].device)
            dist.all_reduce(flag)  # every rank's batch has critiques?
            teacher = int(flag.item()) == dist.get_world_size()
        hidden, logits = self.hidden_and_logits(  # (2B, T, H) and (M, V) at the critique predictions only
            batch["input_ids"], batch["attention_mask"], batch["position_ids"],
            logits_at=mask.reshape(-1).nonzero().squeeze(-1) if teacher else None,
        )
        r = self.rewards(hidden, batch["attention_mask"])  # (2B,)
        b = r.shape[0] // 2
        nll = self.critique_nll(None, batch, logits=logits) if teacher else None
        if nll is not None and global_batch:
            nll = global_token_mean(nll, tokens)
        lam = self.current_critique_weight() if teacher else 0.0
        return critic_rm_loss(r[:b], r[b:], nll, lam, centering=self.hparams.centering)

    def setup(self, stage: str) -> None:
        """Refuse a datamodule that lays sequences out for the other mode (before anything trains)."""
        dm = getattr(self.trainer, "datamodule", None)
        own = getattr(getattr(dm, "hparams", None), "with_critiques", None)
        if own is not None and bool(own) != self.hparams.use_critiques:
            raise ConfigError(f"the datamodule has with_critiques={own} but the model use_critiques="
                              f"{self.hparams.use_critiques}: leave the datamodule's unset (it follows the model)")
        longest = getattr(getattr(dm, "hparams", None), "max_critique_length", 0)
        if self.hparams.use_critiques and longest > self.hparams.max_critique_tokens:
            rank_zero_warn(f"critiques train up to {longest} tokens (data.max_critique_length) but are generated up "
                           f"to {self.hparams.max_critique_tokens} (model.max_critique_tokens)")

    def on_fit_start(self) -> None:
        # Read at the first loss, not here: on_fit_start runs before Lightning restores the checkpoint's loops, and
        # estimated_stepping_batches would build the training loader then, which never gets its saved position
        # (a mid-epoch resume would restart the epoch; core/optim.py).
        self._total_steps = None

    def on_after_backward(self) -> None:
        """Bradley-Terry sees only reward differences, so without centering the loss does not depend on the reward
        head's last bias: its exact gradient is zero. Autograd's sum of the +/- pair gradients leaves round-off
        (~1e-9) that Adam would normalise into steps of about lr in a direction set by the summation order (it
        differs between batch sizes and process counts); the exact zero keeps the bias where it is."""
        if self.hparams.centering == 0:
            grad = self.reward_head.offset.grad
            if grad is not None:
                grad.zero_()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, metrics = self._loss(batch, global_batch=True)
        b = batch["index"].numel()
        self.log("train/loss", loss, prog_bar=True, batch_size=b, sync_dist=True)
        self.log_dict({f"train/{k}": v.float().mean() for k, v in metrics.items()}, batch_size=b, sync_dist=True)
        return loss

    # ------------------------------------------------------------------------------------------- inference
    def stop_ids(self) -> list[int]:
        """Where a critique ends: EOS and the chat template's end-of-turn token (they differ for many models)."""
        from core.chat import PairTokenizer

        ids = [self.tokenizer.eos_token_id, PairTokenizer(self.tokenizer).end_of_turn_id()]
        return sorted({i for i in ids if i is not None})

    @torch.no_grad()
    def generate_critiques(self, requests: dict[str, Tensor], seed: int = 0) -> tuple[Tensor, Tensor, list[str]]:
        """``num_critiques`` critiques per request row (left-padded P + R + A ids).

        Returns the full rows (N*m, T'') with their attention mask (pads, and anything after the first EOS, masked
        out) and the critique texts, row i*m + j holding request i's j-th critique.
        """
        h = self.hparams
        ids, mask = requests["input_ids"], requests["attention_mask"]  # (N, T')
        sample = h.critique_temperature > 0
        stop = self.stop_ids()
        kwargs: dict[str, Any] = dict(max_new_tokens=h.max_critique_tokens, do_sample=sample,
                                      num_return_sequences=h.num_critiques, pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=stop)
        if sample:
            kwargs.update(temperature=h.critique_temperature, top_p=h.critique_top_p, top_k=0)  # no top-k cut
        was_training = self.policy.training
        self.policy.eval()
        with torch.random.fork_rng(devices=[] if ids.device.type == "cpu" else [ids.device]):
            torch.manual_seed((h.init_seed * 1_000_003 + seed) * 1_009 + self.global_rank)  # ranks sample apart
            if self._sharded():  # a rank that has finished keeps running forwards until all have (FSDP gathers)
                kwargs["synced_gpus"] = True
            out = self.policy.generate(input_ids=ids, attention_mask=mask, **kwargs)  # (N*m, T'')
        self.policy.train(was_training)
        new = out[:, ids.shape[1]:]  # (N*m, G)
        is_stop = torch.isin(new, torch.tensor(stop, device=new.device))
        after_eos = (is_stop.long().cumsum(-1) - is_stop.long()) > 0  # strictly after the first stop token
        new_mask = (~after_eos).long()  # (N*m, G): the critique up to and including its stop token
        full_mask = torch.cat([mask.repeat_interleave(h.num_critiques, 0), new_mask], dim=1)  # (N*m, T'')
        texts = self.tokenizer.batch_decode(new.masked_fill(after_eos, self.tokenizer.pad_token_id),
                                            skip_special_tokens=True)
        return out, full_mask, texts

    @torch.no_grad()
    def score_requests(self, requests: dict[str, Tensor], seed: int = 0) -> tuple[Tensor, list[list[str]]]:
        """Rewards (N, m) of each request row, with its m critiques (or (N, 1) and no text for the plain RM)."""
        if not self.hparams.use_critiques:
            hidden = self.hidden_states(requests["input_ids"], requests["attention_mask"])
            return self.rewards(hidden, requests["attention_mask"]).unsqueeze(-1), [[] for _ in hidden]
        m = self.hparams.num_critiques
        ids, mask, texts = self.generate_critiques(requests, seed)
        r = self.rewards(self.hidden_states(ids, mask), mask).view(-1, m)  # (N, m)
        return r, [texts[i * m : (i + 1) * m] for i in range(r.shape[0])]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        b = batch["index"].numel()
        teacher_forced = None
        if batch["has_critiques"] or not self.hparams.use_critiques:
            loss, metrics = self._loss(batch)
            parts = {"loss": loss, "bt": metrics["loss/bt"], "critique": metrics.get("loss/critique")}
            for k, v in parts.items():
                if v is not None:
                    self.val_loss[k].update(v.detach(), weight=b)
                    self.log("val/loss" if k == "loss" else f"val/loss/{k}", self.val_loss[k], prog_bar=k == "loss")
            teacher_forced = torch.cat([metrics["rewards/chosen"], metrics["rewards/rejected"]])  # (2B,)
        if self.hparams.use_critiques and (self.hparams.val_generate or teacher_forced is None):
            r = self.score_requests(batch["requests"], seed=batch_idx)[0].mean(-1)  # (2B,): self-written critiques
        else:
            r = teacher_forced  # the plain RM, or the file's critiques with val_generate=False
        self.val_accuracy.update(r[:b], r[b:])
        self.log("val/accuracy", self.val_accuracy, prog_bar=True)

    def on_test_start(self) -> None:
        subsets = getattr(self.trainer.datamodule, "subsets", {}).get("test") or []
        self.test_accuracy = RewardBenchAccuracy(subsets).to(self.device)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        b = batch["index"].numel()
        r = self.score_requests(batch["requests"], seed=batch_idx)[0].mean(-1)  # (2B,)
        self.test_accuracy.update(r[:b], r[b:], batch["subset"])

    def on_test_epoch_end(self) -> None:
        result = self.test_accuracy.compute()
        self.log_dict({f"test/{k}": v for k, v in result.items()})

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Per pair: the mean rewards of chosen and rejected, each critique's reward, and the critiques."""
        b = batch["index"].numel()
        r, texts = self.score_requests(batch["requests"], seed=batch_idx)  # (2B, m)
        return {"index": batch["index"], "chosen_reward": r[:b].mean(-1), "rejected_reward": r[b:].mean(-1),
                "chosen_rewards": r[:b], "rejected_rewards": r[b:], "chosen_critiques": texts[:b],
                "rejected_critiques": texts[b:]}

    def configure_optimizers(self) -> Any:
        return configure_adamw(self, self.optim)

    # ------------------------------------------------------------------------------------------------ export
    def export_pretrained(self, out_dir: str | Path, merge_lora: bool = True, overwrite: bool = False) -> Path:
        """The LM as a Hugging Face folder (safetensors) plus ``reward_head.safetensors`` and ``critic_rm.json``
        (``overwrite``: :func:`core.export.export_causal_lm`)."""
        import json

        from safetensors.torch import save_file

        from core.export import export_causal_lm

        h = self.hparams
        meta = {"use_critiques": h.use_critiques, "critique_instruction": h.critique_instruction,
                "reward_head_hidden": h.reward_head_hidden, "d_model": self._inner().config.hidden_size}

        def head(folder: Path) -> None:
            state = {k: v.detach().cpu().contiguous() for k, v in self.reward_head.state_dict().items()}
            save_file(state, str(folder / "reward_head.safetensors"))
            (folder / "critic_rm.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

        return export_causal_lm(self.policy, self.tokenizer, out_dir, merge_lora=merge_lora, extra=head,
                                overwrite=overwrite)

