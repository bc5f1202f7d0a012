"""Preference data: exact prompt/response boundary, every input format, and located errors for bad input."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from core.backbones import load_tokenizer
from core.chat import PairTokenizer
from core.errors import DataError
from datamodules import PreferenceDataModule


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-llama")


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# ------------------------------------------------------------------------------------------- tokenisation
def check_boundary(tok, pt: PairTokenizer, prompt: list[dict], response: list[dict], system: str | None = None):
    p_ids = pt.prompt_ids(prompt)
    r_ids = pt.response_ids(prompt, response, "test")
    full = prompt + response
    if system is not None:
        full = [{"role": "system", "content": system}, *full]
        prompt = [{"role": "system", "content": system}, *prompt]
    assert (p_ids + r_ids).count(tok.bos_token_id) == 1
    assert p_ids[0] == tok.bos_token_id
    assert r_ids.count(tok.eos_token_id) == 1 and r_ids[-1] == tok.eos_token_id
    assert tok.bos_token_id not in r_ids
    rendered = tok.apply_chat_template(full, tokenize=False)
    assert tok.decode(p_ids + r_ids) == rendered
    assert tok.decode(p_ids) == tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert tok.decode(r_ids) == rendered[len(tok.decode(p_ids)):]
    return p_ids, r_ids


@pytest.mark.parametrize(
    "text",
    ["It is 4, of course!", " leading space and trailing  ", "multi\nline\n\nanswer", "ünïcödé 😀 and <tags>"],
)
def test_chat_template_boundary(tok, text: str) -> None:
    pt = PairTokenizer(tok)
    assert pt.chat  # the tiny tokenizer ships a template
    p_ids, r_ids = check_boundary(tok, pt, user("What is 2+2? Answer  briefly.\n"), assistant(text))
    # The template's text around the response, exactly: generation header in the prompt, end of turn after.
    assert tok.decode(p_ids).endswith("<|start_header|>assistant<|end_header|>\n")
    assert tok.decode(r_ids) == text + "<|eot|>"


def test_chat_template_boundary_with_messages_and_system(tok) -> None:
    pt = PairTokenizer(tok)
    prompt = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And grass?"},
    ]
    p_ids, r_ids = check_boundary(tok, pt, prompt, assistant("Green."))
    text = tok.decode(p_ids)
    assert text.startswith("<|begin_of_text|><|start_header|>system<|end_header|>\nYou answer in one word.<|eot|>")
    assert text.count("<|start_header|>") == 5  # four turns + the generation prompt


def test_system_prompt_is_added_once(tok) -> None:
    pt = PairTokenizer(tok, system_prompt="Be brief.")
    p_ids, _ = check_boundary(tok, pt, user("Hi"), assistant("Hello."), system="Be brief.")
    assert tok.decode(p_ids).count("Be brief.") == 1
    # A prompt that brings its own system message keeps it, without the default.
    own = [{"role": "system", "content": "Be long."}, *user("Hi")]
    p_ids, _ = check_boundary(tok, pt, own, assistant("Hello."))
    text = tok.decode(p_ids)
    assert "Be long." in text and "Be brief." not in text


def test_without_chat_template(tok) -> None:
    pt = PairTokenizer(tok, use_chat_template=False)
    p_ids = pt.prompt_ids(user("What is 2+2?"))
    r_ids = pt.response_ids(user("What is 2+2?"), assistant(" Four."), "test")
    assert p_ids == [tok.bos_token_id] + tok("What is 2+2?", add_special_tokens=False)["input_ids"]
    assert r_ids == tok(" Four.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok.decode(p_ids + r_ids) == "<|begin_of_text|>What is 2+2? Four.<|eot|>"
    assert (p_ids + r_ids).count(tok.bos_token_id) == 1 and (p_ids + r_ids).count(tok.eos_token_id) == 1


def test_chat_template_demanded_but_missing(tok) -> None:
    class NoTemplate:
        chat_template = None

    with pytest.raises(ValueError, match="no chat template"):
        PairTokenizer(NoTemplate(), use_chat_template=True)
    assert PairTokenizer(NoTemplate()).chat is False


# ------------------------------------------------------------------------------------------ input formats
ROWS = [
    {"prompt": "Name a fruit.", "chosen": "Apple.", "rejected": "Car.", "id": "a", "score": 1.5},
    {"prompt": user("Name a colour."), "chosen": assistant("Red."), "rejected": assistant("Dog."), "id": "b",
     "score": 2.0},
    {"prompt": "Name a city.", "chosen": "Paris.", "rejected": "Paris is a fruit.", "id": "c", "score": -1.0},
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def datamodule(**kwargs: Any) -> PreferenceDataModule:
    kwargs.setdefault("tokenizer", "tiny-llama")
    kwargs.setdefault("shuffle", False)
    return PreferenceDataModule(**kwargs)


def expected_pairs(tok, rows: list[dict]) -> list[tuple[list[int], list[int], list[int]]]:
    pt = PairTokenizer(tok)
    out = []
    for r in rows:
        p = r["prompt"] if isinstance(r["prompt"], list) else user(r["prompt"])
        c = r["chosen"] if isinstance(r["chosen"], list) else assistant(r["chosen"])
        j = r["rejected"] if isinstance(r["rejected"], list) else assistant(r["rejected"])
        out.append((pt.prompt_ids(p), pt.response_ids(p, c, ""), pt.response_ids(p, j, "")))
    return out


def check_loaded(dm: PreferenceDataModule, tok, split: str = "train", rows: list[dict] = ROWS) -> None:
    ds = dm.datasets[split]
    assert [(p.prompt, p.chosen, p.rejected) for p in ds.pairs] == expected_pairs(tok, rows)
    assert dm.stats[split]["kept"] == len(rows)
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    batch = next(iter(loader))
    assert batch["extras"] == [{"id": r["id"], "score": r["score"]} for r in rows]
    assert batch["index"].tolist() == list(range(len(rows)))
    assert batch["packed"] is True and batch["chosen_mask"].shape[0] == len(rows)


def test_jsonl(tmp_path: Path, tok) -> None:
    dm = datamodule(train_files=str(write_jsonl(tmp_path / "train.jsonl", ROWS)), batch_size=8)
    dm.setup("fit")
    check_loaded(dm, tok)
    assert set(dm.datasets) == {"train"}


def test_jsonl_blank_lines_are_skipped(tmp_path: Path, tok) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("\n" + json.dumps(ROWS[0]) + "\n   \n" + json.dumps(ROWS[1]) + "\n", encoding="utf-8")
    dm = datamodule(train_files=str(path))
    dm.setup("fit")
    check_loaded(dm, tok, rows=ROWS[:2])


def test_json_list_and_several_files(tmp_path: Path, tok) -> None:
    a = tmp_path / "a.json"
    a.write_text(json.dumps(ROWS[:2]), encoding="utf-8")
    b = write_jsonl(tmp_path / "b.jsonl", ROWS[2:])
    dm = datamodule(train_files=[str(a), str(b)], val_files=str(a))
    dm.setup("fit")
    check_loaded(dm, tok)
    check_loaded(dm, tok, "val", ROWS[:2])


def test_parquet(tmp_path: Path, tok) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Parquet needs one type per column: strings here, chat messages in a second file.
    strings = [r for r in ROWS if isinstance(r["prompt"], str)]
    pq.write_table(pa.Table.from_pylist(strings), tmp_path / "s.parquet")
    pq.write_table(pa.Table.from_pylist([ROWS[1]]), tmp_path / "m.parquet")
    dm = datamodule(train_files=[str(tmp_path / "s.parquet"), str(tmp_path / "m.parquet")])
    dm.setup("fit")
    check_loaded(dm, tok, rows=[*strings, ROWS[1]])


def test_hf_dataset_saved_to_disk(tmp_path: Path, tok) -> None:
    import datasets

    strings = [r for r in ROWS if isinstance(r["prompt"], str)]
    datasets.Dataset.from_list(strings).save_to_disk(str(tmp_path / "ds"))
    dm = datamodule(hf_dataset=str(tmp_path / "ds"))
    dm.setup("fit")
    check_loaded(dm, tok, rows=strings)


def test_hf_dataset_dict_with_val_split(tmp_path: Path, tok) -> None:
    import datasets

    messages = [ROWS[1], {**ROWS[1], "chosen": assistant("Blue."), "id": "d", "score": 0.0}]
    strings = [r for r in ROWS if isinstance(r["prompt"], str)]
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(messages), "validation": datasets.Dataset.from_list(strings)}
    ).save_to_disk(str(tmp_path / "dd"))
    dm = datamodule(hf_dataset=str(tmp_path / "dd"), hf_val_split="validation")
    dm.setup("fit")
    check_loaded(dm, tok, rows=messages)
    check_loaded(dm, tok, "val", strings)


def test_standard_layout_batches(tmp_path: Path) -> None:
    dm = datamodule(train_files=str(write_jsonl(tmp_path / "t.jsonl", ROWS)), pack_shared_prefix=False,
                    pad_to_multiple_of=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["packed"] is False
    assert batch["input_ids"].shape[0] == 2 * len(ROWS) and batch["input_ids"].shape[1] % 8 == 0
    assert (batch["input_ids"][batch["segment_ids"] == 0] == dm.tokenizer.pad_token_id).all()


# ------------------------------------------------------------------------------------------------ errors
def setup_error(tmp_path: Path, rows: list[Any], name: str = "bad.jsonl", **kwargs: Any) -> tuple[str, str]:
    path = write_jsonl(tmp_path / name, rows)
    dm = datamodule(train_files=str(path), **kwargs)
    with pytest.raises(DataError) as e:
        dm.setup("fit")
    return str(e.value), str(path)


def test_malformed_json_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[2]) + '\n{"prompt": "x", "chosen": \n',
                    encoding="utf-8")
    dm = datamodule(train_files=str(path))
    with pytest.raises(DataError, match="malformed JSON") as e:
        dm.setup("fit")
    assert f"{path}:3" in str(e.value)


def test_malformed_json_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"prompt": "a"},\n  {oops}\n]', encoding="utf-8")
    with pytest.raises(DataError, match="malformed JSON") as e:
        datamodule(train_files=str(path)).setup("fit")
    assert f"{path}:3" in str(e.value)


def test_json_not_a_list_and_item_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"prompt": "a"}), encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON list") as e:
        datamodule(train_files=str(path)).setup("fit")
    assert str(path) in str(e.value)
    path.write_text(json.dumps([ROWS[0], ["not", "an", "object"]]), encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON object") as e:
        datamodule(train_files=str(path)).setup("fit")
    assert f"{path}: item 1" in str(e.value)


def test_jsonl_line_not_an_object(tmp_path: Path) -> None:
    msg, path = setup_error(tmp_path, [ROWS[0], "just a string"])
    assert f"{path}:2" in msg and "expected a JSON object" in msg


def test_missing_file_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file") as e:
        datamodule(train_files=str(tmp_path / "nope.jsonl")).setup("fit")
    assert str(tmp_path / "nope.jsonl") in str(e.value)
    (tmp_path / "x.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        datamodule(train_files=str(tmp_path / "x.csv")).setup("fit")


@pytest.mark.parametrize("field", ["prompt", "chosen", "rejected"])
def test_missing_field(tmp_path: Path, field: str) -> None:
    row = {k: v for k, v in ROWS[0].items() if k != field}
    msg, path = setup_error(tmp_path, [ROWS[0], row])
    assert f"{path}:2" in msg
    assert f"missing field {field!r}" in msg


@pytest.mark.parametrize("field", ["prompt", "chosen", "rejected"])
def test_null_field_is_missing(tmp_path: Path, field: str) -> None:
    msg, path = setup_error(tmp_path, [{**ROWS[0], field: None}])
    assert f"{path}:1" in msg and f"missing field {field!r}" in msg


@pytest.mark.parametrize("field", ["chosen", "rejected"])
@pytest.mark.parametrize("value", ["", "   \n", assistant(""), assistant("  ")])
def test_empty_response(tmp_path: Path, field: str, value: Any) -> None:
    msg, path = setup_error(tmp_path, [ROWS[0], ROWS[2], {**ROWS[0], field: value}])
    assert f"{path}:3" in msg
    assert f"field {field!r} is an empty response" in msg


def test_empty_prompt(tmp_path: Path) -> None:
    msg, path = setup_error(tmp_path, [{**ROWS[0], "prompt": "  "}])
    assert f"{path}:1" in msg and "'prompt'" in msg and "empty" in msg


@pytest.mark.parametrize("field", ["prompt", "chosen", "rejected"])
@pytest.mark.parametrize(
    "value", [5, 1.5, True, {"text": "hi"}, [], ["a", "b"], [{"role": "assistant"}], [{"role": 1, "content": "x"}]]
)
def test_wrong_type(tmp_path: Path, field: str, value: Any) -> None:
    msg, path = setup_error(tmp_path, [ROWS[0], {**ROWS[0], field: value}])
    assert f"{path}:2" in msg
    assert f"field {field!r} must be a string or a non-empty list" in msg


def test_error_names_parquet_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([ROWS[0], {**ROWS[0], "chosen": None}]), path)
    with pytest.raises(DataError) as e:
        datamodule(train_files=str(path)).setup("fit")
    assert f"{path}: row 1" in str(e.value) and "missing field 'chosen'" in str(e.value)


def test_error_names_hf_dataset_row(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list([ROWS[0], ROWS[2], {**ROWS[0], "rejected": ""}]).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError) as e:
        datamodule(hf_dataset=str(tmp_path / "ds")).setup("fit")
    assert f"{tmp_path / 'ds'}[train] row 2" in str(e.value) and "'rejected'" in str(e.value)


def test_error_in_val_file_is_raised_before_training(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    val = write_jsonl(tmp_path / "val.jsonl", [ROWS[0], {"prompt": "x", "chosen": "y"}])
    with pytest.raises(DataError) as e:
        datamodule(train_files=str(train), val_files=str(val)).setup("fit")
    assert f"{val}:2" in str(e.value) and "missing field 'rejected'" in str(e.value)


# -------------------------------------------------------------------------------------- drops and counts
def setup_warns(path: Path, *matches: str, **kwargs: Any) -> PreferenceDataModule:
    """setup() on ``path``; every pattern in ``matches`` is a warning it gave, and it gave no other."""
    dm = datamodule(train_files=str(path), **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    for pattern in matches:
        assert any(re.search(pattern, m) for m in messages), (pattern, messages)
    assert len(messages) == len(matches), messages
    return dm


def test_identical_pair_dropped_counted_warned(tmp_path: Path, tok) -> None:
    same = {"prompt": "Say hi.", "chosen": "Hi.", "rejected": "Hi.", "id": "same", "score": 0.0}
    path = write_jsonl(tmp_path / "t.jsonl", [ROWS[0], same, ROWS[2]])
    dm = setup_warns(path, r"train: 1 pairs with chosen identical to rejected were dropped")
    assert dm.stats["train"]["identical"] == 1
    assert dm.stats["train"]["kept"] == 2
    check_loaded(dm, tok, rows=[ROWS[0], ROWS[2]])
    # Same text as a string and as a message is the same response.
    path = write_jsonl(tmp_path / "u.jsonl", [ROWS[0], {**same, "rejected": assistant("Hi.")}])
    assert setup_warns(path, "identical").stats["train"]["identical"] == 1


def test_only_identical_pairs_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "b"}])
    dm = datamodule(train_files=str(path))
    with pytest.raises(DataError, match="no usable training pairs"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("fit")


def test_clean_data_warns_nothing(tmp_path: Path) -> None:
    dm = datamodule(train_files=str(write_jsonl(tmp_path / "t.jsonl", ROWS)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.setup("fit")
    assert {k for k, v in dm.stats["train"].items() if v} == {"kept"}


LONG_PROMPT = "Please list many fruits " * 8  # 54 tokens with the template; the short prompts have 16 to 19


@pytest.mark.parametrize("side", ["left", "right"])
def test_long_prompt_truncated(tmp_path: Path, tok, side: str) -> None:
    long = {"prompt": LONG_PROMPT, "chosen": "Apple.", "rejected": "Car.", "id": "long", "score": 0.0}
    path = write_jsonl(tmp_path / "t.jsonl", [ROWS[0], long])
    dm = setup_warns(path, "train: 1 prompts over max_prompt_length were truncated", max_prompt_length=24,
                     max_length=64, prompt_truncation_side=side)
    assert dm.stats["train"]["prompt_truncated"] == 1 and dm.stats["train"]["kept"] == 2
    full = PairTokenizer(tok).prompt_ids(user(LONG_PROMPT))
    assert len(full) > 24
    kept = dm.datasets["train"].pairs[1]
    assert len(kept.prompt) == 24
    # Left truncation keeps the end of the prompt but still starts with the one BOS.
    assert kept.prompt == (full[:1] + full[-23:] if side == "left" else full[:24])
    assert kept.prompt.count(tok.bos_token_id) == 1
    # Responses are unchanged (the boundary stays exact) and the short prompt is untouched.
    assert (kept.chosen, kept.rejected) == expected_pairs(tok, [long])[0][1:]
    assert dm.datasets["train"].pairs[0].prompt == expected_pairs(tok, [ROWS[0]])[0][0]


def test_long_prompt_dropped(tmp_path: Path) -> None:
    long = {"prompt": LONG_PROMPT, "chosen": "Apple.", "rejected": "Car."}
    path = write_jsonl(tmp_path / "t.jsonl", [ROWS[0], long, long, ROWS[2]])
    dm = setup_warns(path, "train: 2 pairs with a prompt over max_prompt_length were dropped", max_prompt_length=24,
                     max_length=64, prompt_overflow="drop")
    assert dm.stats["train"]["prompt_too_long_dropped"] == 2
    assert dm.stats["train"]["kept"] == 2 and len(dm.datasets["train"]) == 2
    assert [e["id"] for e in dm.datasets["train"].extras] == ["a", "c"]


def test_long_prompt_error(tmp_path: Path) -> None:
    long = {"prompt": LONG_PROMPT, "chosen": "Apple.", "rejected": "Car."}
    msg, path = setup_error(tmp_path, [ROWS[0], long], max_prompt_length=24, max_length=64, prompt_overflow="error")
    assert f"{path}:2" in msg and "54 tokens" in msg and "max_prompt_length=24" in msg


def test_max_prompt_length_must_be_below_max_length() -> None:
    with pytest.raises(ValueError, match="max_prompt_length"):
        PreferenceDataModule(tokenizer="tiny-llama", max_length=32, max_prompt_length=32)


def test_responses_cut_to_max_length(tmp_path: Path, tok) -> None:
    long = {"prompt": "Name fruits.", "chosen": "Apple, pear, plum, cherry, mango, grape, lemon, peach, melon.",
            "rejected": "Car.", "id": "long", "score": 0.0}
    path = write_jsonl(tmp_path / "t.jsonl", [ROWS[0], long])
    dm = setup_warns(path, "train: 1 pairs had responses cut to fit max_length", max_prompt_length=24, max_length=30)
    assert dm.stats["train"]["response_truncated"] == 1 and dm.stats["train"]["kept"] == 2
    assert dm.stats["train"]["prompt_truncated"] == 0
    p_ids, c_full, r_full = expected_pairs(tok, [long])[0]
    assert len(p_ids) + len(c_full) > 30 >= len(p_ids) + len(r_full)
    pair = dm.datasets["train"].pairs[1]
    assert pair.prompt == p_ids
    assert pair.chosen == c_full[: 30 - len(p_ids)] and len(pair.prompt) + len(pair.chosen) == 30
    assert pair.rejected == r_full  # the short one is not cut


def test_responses_identical_after_cut_dropped(tmp_path: Path) -> None:
    same_start = {"prompt": "Name fruits.", "chosen": "Apple, pear, plum, cherry, mango, grape, lemon.",
                  "rejected": "Apple, pear, plum, cherry, mango, grape, melon."}
    path = write_jsonl(tmp_path / "t.jsonl", [ROWS[0], same_start])
    # The two responses agree on their first 13 tokens; the 16-token prompt leaves a budget of 12.
    dm = setup_warns(path, "train: 1 pairs had responses cut to fit max_length",
                     "train: 1 pairs became identical after truncation and were dropped", max_prompt_length=24,
                     max_length=28)
    assert dm.stats["train"]["response_truncated"] == 1
    assert dm.stats["train"]["identical_after_truncation"] == 1
    assert dm.stats["train"]["kept"] == 1
