"""Every reader of user files on text that is not UTF-8 (issue 15, defect 6) and on a UTF-8 byte-order mark.

A Latin-1 byte (``é`` = 0xe9) on line 3 must give one :class:`DataError` naming ``path:3`` (never a bare
``UnicodeDecodeError`` traceback), and every command must print it as one ``error: ...`` line with exit status 2.
A file that starts with a UTF-8 byte-order mark reads exactly as the same file without it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.errors import DataError
from core.records import iter_jsonl, read_records
from datamodules.multimodal import (
    mmimdb_split_ids,
    read_hateful_memes,
    read_jsonl,
    read_mmimdb,
    read_snli_ve,
)
from datamodules.multitask import manifest_tasks, read_task_records
from datamodules.rationale import DocumentStore, read_eraser, read_sst
from pipelines.critiques.pipeline import read_pairs as read_critique_pairs
from pipelines.instruction_following.curate import read_pairs as read_curate_pairs
from pipelines.instruction_following.pairs import read_prompts
from pipelines.instruction_following.scoring import read_ifeval_inputs, read_responses
from pipelines.nrg import read_metrics_file
from pipelines.prefix_extract import load_records
from pipelines.rewardbench import read_scored

BOM = b"\xef\xbb\xbf"
PAIR = {"prompt": "p", "chosen": "good", "rejected": "bad"}
IFEVAL = {"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
IMAGE_ROW = {"id": 1, "img": "img/1.png", "text": "t", "label": 0}


def latin1(text: str) -> bytes:
    """``text`` (ASCII except for ``é``) as Latin-1: valid UTF-8 everywhere but at each ``é``."""
    return text.encode("latin-1")


def write_lines(path: Path, good: list[str], bad: str, after: list[str] = ()) -> Path:
    """``good`` lines (UTF-8), then ``bad`` in Latin-1 (so its ``é`` is byte 0xe9), then ``after``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(line.encode() + b"\n" for line in good) + latin1(bad) + b"\n"
    data += b"".join(line.encode() + b"\n" for line in after)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def jsonl(path: Path, row: dict[str, Any], field: str) -> Path:
    """Two good rows, then on line 3 the row with ``field`` = ``café`` in Latin-1."""
    line = json.dumps(row)
    return write_lines(path, [line, line], json.dumps({**row, field: "café"}, ensure_ascii=False))


# Each case: (tmp folder) -> (the file with the bad byte on line 3, a call that reads it).
Case = Callable[[Path], tuple[Path, Callable[[], Any]]]


def _records_jsonl(tmp: Path):
    p = jsonl(tmp / "pairs.jsonl", PAIR, "chosen")
    return p, lambda: read_records([str(p)])


def _records_gz(tmp: Path):
    p = jsonl(tmp / "pairs.jsonl.gz", PAIR, "chosen")
    return p, lambda: read_records(str(p))


def _records_json(tmp: Path):
    p = write_lines(tmp / "pairs.json", ["[", json.dumps(PAIR) + ","], json.dumps({**PAIR, "chosen": "café"},
                                                                                ensure_ascii=False), ["]"])
    return p, lambda: read_records(str(p))


def _iter_jsonl(tmp: Path):
    p = write_lines(tmp / "blank.jsonl", ["", ""], '{"a": "café"}')
    return p, lambda: list(iter_jsonl(p))


def _task_tsv(tmp: Path):
    p = write_lines(tmp / "train.tsv", ["sentence\tlabel", "a\t0"], "café\t1")
    return p, lambda: read_task_records(str(p))


def _task_csv(tmp: Path):
    p = write_lines(tmp / "train.csv", ["sentence,label", "a,0"], '"café",1')
    return p, lambda: read_task_records([str(p)])


def _task_manifest(tmp: Path):
    p = write_lines(tmp / "tasks.json", ["{", '  "tasks": []'], ', "note": "café"', ["}"])
    return p, lambda: manifest_tasks(p)


def _sst(tmp: Path):
    p = jsonl(tmp / "sst.jsonl", {"text": "a b", "label": 1}, "text")
    return p, lambda: read_sst(str(p))


def _eraser_annotations(tmp: Path):
    (tmp / "docs").mkdir()
    p = jsonl(tmp / "train.jsonl", {"annotation_id": "d1", "classification": "POS", "evidences": []}, "query")
    return p, lambda: read_eraser(tmp, "train")


def _eraser_docs_jsonl(tmp: Path):
    p = jsonl(tmp / "docs.jsonl", {"docid": "d1", "document": "a b"}, "document")
    return p, lambda: DocumentStore(tmp)


def _eraser_doc_file(tmp: Path):
    p = write_lines(tmp / "docs" / "d1", ["a b", "c d"], "café")
    return p, lambda: DocumentStore(tmp).words("d1")


def _multimodal_jsonl(tmp: Path):
    p = jsonl(tmp / "rows.jsonl", IMAGE_ROW, "text")
    return p, lambda: read_jsonl(p)


def _hateful_memes(tmp: Path):
    p = jsonl(tmp / "train.jsonl", IMAGE_ROW, "text")
    return p, lambda: read_hateful_memes(tmp, "train.jsonl")


def _mmimdb_split(tmp: Path):
    p = write_lines(tmp / "split.json", ["{", '  "train": ["1"],'], '  "dev": ["café"]', ["}"])
    return p, lambda: mmimdb_split_ids(tmp)


def _mmimdb_movie(tmp: Path):
    p = write_lines(tmp / "dataset" / "1.json", ["{", '  "genres": ["Drama"],'], '  "plot": ["café"]', ["}"])
    return p, lambda: read_mmimdb(tmp, "train", ids=["1"])


def _snli_ve(tmp: Path):
    row = {"Flikr30kID": "1.jpg", "sentence2": "h", "gold_label": "neutral"}
    p = jsonl(tmp / "snli_ve_train.jsonl", row, "sentence2")
    return p, lambda: read_snli_ve(tmp, "train")


def _if_prompts(tmp: Path):
    p = jsonl(tmp / "prompts.jsonl", IFEVAL, "prompt")
    return p, lambda: read_prompts(p)


def _ifeval_inputs(tmp: Path):
    p = jsonl(tmp / "input.jsonl", IFEVAL, "prompt")
    return p, lambda: read_ifeval_inputs(p)


def _ifeval_responses(tmp: Path):
    p = jsonl(tmp / "responses.jsonl", {"prompt": "p", "response": "r"}, "response")
    return p, lambda: read_responses(p)


def _curate_pairs(tmp: Path):
    p = jsonl(tmp / "rs.jsonl", {"prompt": "p", "error": "boom"}, "prompt")  # failure records: skipped
    return p, lambda: read_curate_pairs(p)


def _critique_pairs(tmp: Path):
    p = jsonl(tmp / "pairs.jsonl", PAIR, "chosen")
    return p, lambda: read_critique_pairs(p)


def _nrg_json(tmp: Path):
    p = write_lines(tmp / "run" / "metrics.json", ["{", '  "test/acc": 0.5,'], '  "café": 1.0', ["}"])
    return p, lambda: read_metrics_file(p)


def _nrg_csv(tmp: Path):
    p = write_lines(tmp / "run" / "metrics.csv", ["step,test/acc", "0,0.5"], "1,café")
    return p, lambda: read_metrics_file(tmp / "run")


def _prefix_extract(tmp: Path):
    p = jsonl(tmp / "texts.jsonl", {"text": "a"}, "text")
    return p, lambda: load_records(argparse.Namespace(input=str(p), hf_dataset=None, split="train"))


def _rewardbench(tmp: Path):
    p = jsonl(tmp / "scored.jsonl", {"subset": "alpacaeval-easy", "chosen_reward": 1.0, "rejected_reward": 0.0},
              "subset")
    return p, lambda: read_scored([p])


CASES: dict[str, Case] = {
    "records-jsonl (preference/sft/reward)": _records_jsonl,
    "records-jsonl.gz": _records_gz,
    "records-json": _records_json,
    "iter_jsonl": _iter_jsonl,
    "multitask-tsv": _task_tsv,
    "multitask-csv": _task_csv,
    "multitask-manifest": _task_manifest,
    "rationale-sst": _sst,
    "rationale-eraser-annotations": _eraser_annotations,
    "rationale-eraser-docs.jsonl": _eraser_docs_jsonl,
    "rationale-eraser-doc-file": _eraser_doc_file,
    "multimodal-jsonl": _multimodal_jsonl,
    "multimodal-hateful-memes": _hateful_memes,
    "multimodal-mmimdb-split": _mmimdb_split,
    "multimodal-mmimdb-movie": _mmimdb_movie,
    "multimodal-snli-ve": _snli_ve,
    "if-read_prompts": _if_prompts,
    "if-read_ifeval_inputs": _ifeval_inputs,
    "if-read_responses": _ifeval_responses,
    "if-curate-read_pairs": _curate_pairs,
    "critiques-read_pairs": _critique_pairs,
    "nrg-json": _nrg_json,
    "nrg-csv": _nrg_csv,
    "prefix-extract": _prefix_extract,
    "rewardbench": _rewardbench,
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_latin1_byte_on_line_3_names_file_and_line(tmp_path: Path, case: str) -> None:
    path, read = CASES[case](tmp_path)
    with pytest.raises(DataError) as info:
        read()
    assert str(info.value).startswith(f"{path}:3: not UTF-8 text (byte 0xe9 at column ")
    assert "\n" not in str(info.value)


def test_message_gives_the_column_of_the_bad_byte(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", ['{"a": 1}', ""], '{"a": "café"}')
    with pytest.raises(DataError, match=r"x\.jsonl:3: not UTF-8 text \(byte 0xe9 at column 11\); save the file "
                                        r"as UTF-8$"):
        list(iter_jsonl(path))
    json_path = write_lines(tmp_path / "x.json", ["[", "{},"], '{"a": "café"}', ["]"])
    with pytest.raises(DataError, match=r"x\.json:3: not UTF-8 text \(byte 0xe9 at column 11\)"):
        read_records(str(json_path))


# ------------------------------------------------------------------------------------------------ commands
def _one_error_line(err: str, path: Path) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}:3: not UTF-8 text (byte 0xe9"), err


def test_train_cli_dpo_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from train import main

    bad = jsonl(tmp_path / "train.jsonl", PAIR, "chosen")
    args = ["fit", "--model", "DPO", "--data", "PreferenceDataModule", "--data.train_files", str(bad),
            "--data.batch_size", "2", "--trainer.accelerator", "cpu", "--trainer.max_steps", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(tmp_path), "--model.reference_cache_dir", str(tmp_path / "cache")]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    _one_error_line(capsys.readouterr().err, bad)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_lm_suite_if_rs_exits_2_with_one_line(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.cli import main
    from pipelines.instruction_following import pairs as pairs_module

    monkeypatch.setattr(pairs_module, "build_generator", lambda *a, **k: object())  # never asked: no model
    bad = jsonl(tmp_path / "prompts.jsonl", IFEVAL, "prompt")
    assert main(["if", "rs", "--prompts", str(bad), "--out", str(tmp_path / "pairs.jsonl"), "--n", "2"]) == 2
    _one_error_line(capsys.readouterr().err, bad)
    assert not (tmp_path / "pairs.jsonl").exists()


def test_lm_suite_critiques_generate_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    from pipelines.cli import main

    bad = jsonl(tmp_path / "pairs.jsonl", PAIR, "chosen")
    out = tmp_path / "critiques.jsonl"
    assert main(["critiques", "generate", "--pairs", str(bad), "--out", str(out), "--backend", "scripted"]) == 2
    _one_error_line(capsys.readouterr().err, bad)
    assert not out.exists()


@pytest.mark.parametrize("tool", ["if score", "if curate", "nrg", "rewardbench", "score-rewards", "prefix extract"])
def test_other_commands_exit_2_with_one_line(tmp_path: Path, capsys, tool: str) -> None:
    from pipelines.cli import main

    out = tmp_path / "out"
    if tool == "if score":
        bad = jsonl(tmp_path / "input.jsonl", IFEVAL, "prompt")
        argv = ["if", "score", "--input", str(bad), "--responses", str(bad)]
    elif tool == "if curate":
        bad = jsonl(tmp_path / "rs.jsonl", {"prompt": "p", "error": "boom"}, "prompt")
        argv = ["if", "curate", "--pairs", str(bad), "--out", str(out)]
    elif tool == "nrg":
        bad, _ = _nrg_csv(tmp_path)
        argv = ["nrg", str(bad), str(bad)]
    elif tool == "rewardbench":
        bad, _ = _rewardbench(tmp_path)
        argv = ["rewardbench", "--scores", str(bad)]
    elif tool == "score-rewards":
        bad = jsonl(tmp_path / "pairs.jsonl", PAIR, "chosen")
        (tmp_path / "model.ckpt").write_bytes(b"")  # read after the input
        argv = ["score-rewards", "--ckpt", str(tmp_path / "model.ckpt"), "--input", str(bad), "--out", str(out)]
    else:
        bad, _ = _prefix_extract(tmp_path)
        argv = ["prefix", "extract", "--backbone", "tiny-bert", "--prefixes", "none", "--input", str(bad),
                "--out", str(out) + ".safetensors"]
    assert main(argv) == 2
    _one_error_line(capsys.readouterr().err, bad)
    assert not list(tmp_path.glob("out*"))


# ------------------------------------------------------------------------------------------------ byte-order mark
def _with_and_without_bom(tmp: Path, name: str, text: str) -> tuple[Path, Path]:
    plain, bom = tmp / "plain" / name, tmp / "bom" / name
    for path, data in ((plain, text.encode()), (bom, BOM + text.encode())):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return plain, bom


PAIRS_TEXT = "".join(json.dumps({**PAIR, "chosen": f"good {i} é"}, ensure_ascii=False) + "\n" for i in range(3))


@pytest.mark.parametrize(
    ("name", "text", "read"),
    [
        ("pairs.jsonl", PAIRS_TEXT, lambda p: [r for r, _ in read_records(str(p))]),
        ("pairs.jsonl.gz", PAIRS_TEXT, lambda p: [r for r, _ in read_records(str(p))]),
        ("pairs.json", json.dumps([PAIR, PAIR]), lambda p: [r for r, _ in read_records(str(p))]),
        ("train.tsv", "sentence\tlabel\ncafé\t1\n", lambda p: [r for r, _ in read_task_records(str(p))]),
        ("train.csv", "sentence,label\n\"a, b\",0\n", lambda p: [r for r, _ in read_task_records(str(p))]),
        ("metrics.csv", "step,test/acc\n0,0.5\n", read_metrics_file),
        ("metrics.json", '{"test/acc": 0.5}', read_metrics_file),
        ("pairs.jsonl", PAIRS_TEXT, lambda p: [(c.prompt, c.chosen, c.rejected) for c in read_critique_pairs(p)]),
        ("prompts.jsonl", json.dumps(IFEVAL) + "\n", lambda p: [r.prompt for r in read_prompts(p)]),
    ],
    ids=["jsonl", "jsonl.gz", "json", "tsv", "csv", "nrg-csv", "nrg-json", "critiques", "if-prompts"],
)
def test_byte_order_mark_reads_the_same(tmp_path: Path, name: str, text: str, read: Callable[[Path], Any]) -> None:
    plain, bom = _with_and_without_bom(tmp_path, name, text)
    expected = read(plain)
    assert expected  # something was read
    assert read(bom) == expected


def test_byte_order_mark_eraser_document_and_line_numbers(tmp_path: Path) -> None:
    plain, bom = _with_and_without_bom(tmp_path, "docs/d1", "café au lait\n")
    assert DocumentStore(bom.parent.parent).words("d1") == DocumentStore(plain.parent.parent).words("d1") == [
        "café", "au", "lait"]
    path = tmp_path / "bom.jsonl"
    path.write_bytes(BOM + b'{"a": 1}\n\n{"a": 2}\n')
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (3, {"a": 2})]


# ------------------------------------------------------------------------------------------------ empty train file
def _data_module(kind: str, path: Path, **kwargs: Any) -> Any:
    from datamodules.preference import PreferenceDataModule
    from datamodules.reward import RewardDataModule
    from datamodules.sft import SFTDataModule

    cls = {"preference": PreferenceDataModule, "sft": SFTDataModule, "reward": RewardDataModule}[kind]
    return cls(train_files=str(path), tokenizer="tiny-llama", **kwargs)


@pytest.mark.parametrize(("kind", "what"), [("preference", "pairs"), ("sft", "examples"), ("reward", "pairs")])
@pytest.mark.parametrize("content", [b"", b"\n  \n", BOM], ids=["empty", "blank-lines", "bom-only"])
def test_empty_train_file_names_the_file(tmp_path: Path, kind: str, what: str, content: bytes) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        _data_module(kind, path).setup()
    assert str(info.value) == f"{path}: no training {what}: no records were read (an empty file?)"


def test_train_file_with_every_row_dropped_says_why(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}) + "\n" + json.dumps(
        {"prompt": "q", "chosen": "x", "rejected": "x"}) + "\n")
    with pytest.raises(DataError) as info:
        _data_module("preference", path).setup()
    assert str(info.value) == f"{path}: no usable training pairs left after validation: all 2 records dropped " \
                              "(identical: 2)"
    path.write_text(json.dumps({"prompt": "a long prompt of many words", "response": "r"}) + "\n")
    with pytest.raises(DataError) as info:
        _data_module("sft", path, max_prompt_length=2, max_length=8).setup()
    assert str(info.value) == f"{path}: no usable training examples left after validation: all 1 records dropped " \
                              "(prompt_too_long_dropped: 1)"


# ------------------------------------------------------------------------------------------------ class labels
STRAY = "never occur in the training labels"


def test_inferred_class_count_rule() -> None:
    from core.records import inferred_class_count

    assert inferred_class_count([(1, "a:1"), (0, "a:2"), (2, "a:3")], "label", "fix") == 3
    with pytest.raises(DataError) as info:
        inferred_class_count([(0, "a:1"), (1, "a:2"), (7, "a:3"), (7, "a:4")], "label", "give num_labels")
    assert str(info.value) == ("a:3: field 'label' is 7, but class(es) 2, 3, 4, 5, 6 never occur in the training "
                               "labels (0, 1, 7): a stray label? (give num_labels)")


def _text_task(tmp: Path, train: list[int], val: list[int] | None = None, **kwargs: Any) -> Any:
    from core.backbones import load_tokenizer
    from datamodules.multitask import TextTaskDataModule

    files = {"train_files": str(tmp / "train.jsonl")}
    (tmp / "train.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": y}) + "\n"
                                             for i, y in enumerate(train)))
    if val is not None:
        files["val_files"] = str(tmp / "val.jsonl")
        (tmp / "val.jsonl").write_text("".join(json.dumps({"text": "v", "label": y}) + "\n" for y in val))
    dm = TextTaskDataModule(**files, **kwargs)
    dm._tokenizer = load_tokenizer("tiny-bert")
    dm.setup()
    return dm


def test_multitask_stray_train_label_and_unknown_val_label(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    with pytest.raises(DataError) as info:
        _text_task(tmp_path, [0, 1, 7, 1])
    assert str(info.value).startswith(f"{train}:3: field 'label' is 7, but class(es) 2, 3, 4, 5, 6 {STRAY} (0, 1, 7)")
    assert _text_task(tmp_path, [0, 1, 7, 1], num_labels=8).num_labels == 8  # declared: classes may be absent
    with pytest.raises(DataError) as info:
        _text_task(tmp_path, [0, 1, 1], val=[1, 0, 2])
    assert str(info.value) == (f"{tmp_path / 'val.jsonl'}:3: field 'label' is 2, a class the training labels (0..1) "
                               "never have (task 'task')")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'val.jsonl'}:1: field 'label' is 3, but num_labels "
                                                  "is 3")):
        _text_task(tmp_path, [0, 1, 2], val=[3], num_labels=3)


def test_rationale_and_multimodal_stray_train_label() -> None:
    from datamodules.multimodal import MultimodalRow, encode_label, resolve_labels
    from datamodules.rationale import RationaleRow, label_index, resolve_label_names

    def r(label: int, where: str) -> RationaleRow:
        return RationaleRow("i", [["w"]], None, None, None, label, where)

    with pytest.raises(DataError, match=re.escape(f"t.jsonl:2: field 'label' is 7, but class(es) 1, 2, 3, 4, 5, 6 "
                                                  f"{STRAY} (0, 7)")):
        resolve_label_names([r(0, "t.jsonl:1"), r(7, "t.jsonl:2")], None)
    names = resolve_label_names([r(0, "t.jsonl:1"), r(1, "t.jsonl:2")], None)
    with pytest.raises(DataError, match=re.escape("v.jsonl:3: label 7 is not a class index in [0, 2)")):
        label_index(r(7, "v.jsonl:3"), names)

    def m(label: int, where: str) -> MultimodalRow:
        return MultimodalRow("i", Path("x.png"), "t", label, where, "label", None)

    with pytest.raises(DataError, match=re.escape(f"t.jsonl:3: field 'label' is 7, but class(es) 2, 3, 4, 5, 6 "
                                                  f"{STRAY} (0, 1, 7)")):
        resolve_labels([m(0, "t.jsonl:1"), m(1, "t.jsonl:2"), m(7, "t.jsonl:3")])
    names, multi = resolve_labels([m(0, "t.jsonl:1"), m(1, "t.jsonl:2")])
    with pytest.raises(DataError, match=re.escape("v.jsonl:2: field 'label' is 7, but there are 2 classes")):
        encode_label(m(7, "v.jsonl:2"), names, multi)


# ------------------------------------------------------------------------------------------------ duplicate ids
def test_duplicate_multimodal_ids_are_an_error_naming_both_rows(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [IMAGE_ROW, {**IMAGE_ROW, "id": 2}, {**IMAGE_ROW, "text": "again"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    assert str(info.value) == f"{path}:3: duplicate id '1' (first at {path}:1)"
    no_ids = [{k: v for k, v in r.items() if k != "id"} for r in rows]  # ids from file:line: never twice
    path.write_text("".join(json.dumps(r) + "\n" for r in no_ids))
    assert [r.id for r in read_jsonl(path)] == ["rows.jsonl:1", "rows.jsonl:2", "rows.jsonl:3"]
    ve = tmp_path / "snli_ve_train.jsonl"
    row = {"Flikr30kID": "1.jpg", "sentence2": "h", "gold_label": "neutral", "pairID": "p1"}
    ve.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{ve}:2: duplicate id 'p1' (first at {ve}:1)")):
        read_snli_ve(tmp_path, "train")
    (tmp_path / "split.json").write_text('{"train": ["1", 2, "2"], "dev": []}')
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'split.json'}: field 'train': movie id '2' is listed "
                                                  "twice")):
        mmimdb_split_ids(tmp_path)


def test_duplicate_ifeval_keys_are_an_error_naming_both_lines(tmp_path: Path, capsys) -> None:
    from pipelines.cli import main

    path = tmp_path / "input.jsonl"
    rows = [IFEVAL, {**IFEVAL, "key": 2, "prompt": "q"}, {**IFEVAL, "prompt": "r"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as info:
        read_ifeval_inputs(path)
    assert str(info.value) == f"{path}:3: field 'key': duplicate key 1 (first at {path}:1)"
    with pytest.raises(DataError, match=re.escape(f"{path}:3: field 'key': duplicate key 1")):
        read_prompts(path)
    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(json.dumps({"prompt": r["prompt"], "response": "x"}) + "\n" for r in rows))
    assert main(["if", "score", "--input", str(path), "--responses", str(responses)]) == 2
    assert capsys.readouterr().err == f"error: {path}:3: field 'key': duplicate key 1 (first at {path}:1)\n"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "key"}) + "\n" for r in rows))
    assert [i.key for i in read_ifeval_inputs(path)] == [None, None, None]  # no keys: nothing to clash


# ------------------------------------------------------------------------------------------------ image paths
@pytest.mark.parametrize("image", ["../../secret.png", "img/../../secret.png", "/etc/secret.png"])
def test_image_path_outside_the_data_root_is_refused(tmp_path: Path, image: str) -> None:
    root = tmp_path / "data" / "memes"
    path = root / "train.jsonl"
    root.mkdir(parents=True)
    path.write_text(json.dumps(IMAGE_ROW) + "\n" + json.dumps({**IMAGE_ROW, "id": 2, "img": image}) + "\n")
    message = f"{path}:2: field 'img': {image!r} points outside the data root {root} (set " \
              "--data.allow_outside_root true to allow it)"
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    assert str(info.value) == message
    with pytest.raises(DataError) as info:
        read_hateful_memes(root, "train.jsonl")
    assert str(info.value) == message
    rows = read_jsonl(path, allow_outside_root=True)
    assert [r.image for r in rows] == [root / "img/1.png", root / image]
    path.write_text(json.dumps({**IMAGE_ROW, "img": "img/../other/1.png"}) + "\n")  # `..` that stays inside: fine
    assert read_jsonl(path)[0].image == root / "img/../other/1.png"


def test_snli_ve_image_outside_and_the_data_module_flag(tmp_path: Path) -> None:
    from datamodules.multimodal import MultimodalDataModule

    ve = tmp_path / "snli_ve_train.jsonl"
    ve.write_text(json.dumps({"Flikr30kID": "../x.jpg", "sentence2": "h", "gold_label": "neutral"}) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{ve}:1: field 'Flikr30kID': '../x.jpg' points outside the data "
                                                  f"root {tmp_path / 'flickr30k_images'}")):
        read_snli_ve(tmp_path, "train")
    assert read_snli_ve(tmp_path, "train", allow_outside_root=True)[0].image == tmp_path / "flickr30k_images/../x.jpg"
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({**IMAGE_ROW, "img": "../x.png"}) + "\n" + json.dumps({**IMAGE_ROW, "id": 2}) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:1: field 'img': '../x.png' points outside")):
        MultimodalDataModule(train_file=str(path)).read_rows()
    rows = MultimodalDataModule(train_file=str(path), allow_outside_root=True).read_rows()
    assert rows["train"][0].image == tmp_path / "../x.png"


def test_a_critique_template_that_is_not_utf8_is_one_line_at_its_line(tmp_path: Path) -> None:
    from pipelines.critiques.templates import load_template

    bad = tmp_path / "critique.txt"
    bad.write_bytes(b"P={prompt}\nR={response}\nScore \xe9 {{N}}\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(bad))}:3: not UTF-8"):
        load_template(bad, "critique")
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfP={prompt} R={response} Score {{N}}")
    assert load_template(bom, "critique").startswith("P={prompt}")
