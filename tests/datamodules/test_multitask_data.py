"""Text-task data: located reader errors, type inference, exact batches, task-balanced sampling, the synthetic suite."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from transformers import BertTokenizer

from core.backbones import load_tokenizer
from core.errors import ConfigError, DataError
from datamodules import multitask_synthetic as synth
from datamodules.multitask import (
    MultiTaskDataModule,
    TaskBalancedSampler,
    TextTaskDataModule,
    task_quotas,
)
from datamodules.synthetic import TOPICS

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "data" / "multitask"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-bert")


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def text_data(tok: Any, **kwargs: Any) -> TextTaskDataModule:
    dm = TextTaskDataModule(**kwargs)
    dm._tokenizer = tok  # what `tokenizer=...` or the LightningModule would give
    dm.setup()
    return dm


# ----------------------------------------------------------------------------------------------- reading
BAD_ROWS = [
    ({"sentence": "x", "label": 1}, {}, "missing field 'text' (text_field; fields here: sentence, label)"),
    ({"text": "x"}, {}, "missing field 'label' (label_field)"),
    ({"text": "x", "label": None}, {}, "missing field 'label' (label_field)"),
    ({"text": "  ", "label": 1}, {}, "field 'text' is empty"),
    ({"text": 3, "label": 1}, {}, "field 'text' must be a string, got int"),
    ({"text": "x", "label": "pos"}, {}, "field 'label' must be a number, got 'pos'"),
    ({"text": "x", "label": [1]}, {},
     "field 'label' must be an int (classification) or a float (regression), got list"),
    ({"text": "x", "label": -1}, {}, "field 'label' is -1 (class indices start at 0"),
    ({"text": "x", "label": 1.5}, {"task_type": "classification"}, "field 'label' is 1.5, not a class index"),
    ({"text": "x", "label": 2}, {"num_labels": 2}, "field 'label' is 2, but num_labels is 2"),
    ({"text": "x", "label": 1}, {"text_pair_field": "text_b"}, "missing field 'text_b' (text_pair_field"),
    ('{"text": "x", "label": NaN}', {}, "field 'label' is nan (expected a finite number)"),
    ('{"text": "x", "label": 1', {}, "malformed JSON"),
]


@pytest.mark.parametrize(("row", "kwargs", "message"), BAD_ROWS, ids=[m[:24] for _, _, m in BAD_ROWS])
@pytest.mark.parametrize("split", ["train", "val"])
def test_bad_rows_name_file_line_and_field(tmp_path: Path, tok, row: Any, kwargs: dict, message: str,
                                           split: str) -> None:
    good = {"text": "i like apple.", "label": 1, "text_b": "y"}
    bad = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    ok = write_jsonl(tmp_path / "ok.jsonl", [good, {"text": "we have no cat.", "label": 0, "text_b": "z"}])
    files = {"train_files": str(bad if split == "train" else ok), "val_files": str(bad if split == "val" else ok)}
    with pytest.raises(DataError) as info:
        text_data(tok, **files, **kwargs)
    assert str(info.value).startswith(f"{bad}:2: {message}"), str(info.value)


def test_tsv_errors_name_file_line(tmp_path: Path, tok) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text("sentence\tlabel\nhere is saw.\t1\nhere is a cat.\t1\tspare\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}:3: 3 columns, the header has 2")):
        text_data(tok, train_files=str(path), text_field="sentence")
    path.write_text("sentence\tlabel\nhere is saw.\tyes\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}:2: field 'label' must be a number, got 'yes'")):
        text_data(tok, train_files=str(path), text_field="sentence")


# -------------------------------------------------------------------------------------- type inference
@pytest.mark.parametrize(
    ("train", "val", "kwargs", "task_type", "num_labels", "labels"),
    [
        ([0, 2, 1], [4], {"num_labels": 5}, "classification", 5, [0, 2, 1]),  # declared: val may use class 4
        ([0.5, 1, 2], None, {}, "regression", 1, [0.5, 1.0, 2.0]),  # any float: regression
        ([1.0, 0.0], None, {}, "regression", 1, [1.0, 0.0]),  # floats stay regression unless told otherwise
        ([1.0, 0.0], None, {"task_type": "classification"}, "classification", 2, [1, 0]),
        ([1, 0, 3], None, {"task_type": "regression"}, "regression", 1, [1.0, 0.0, 3.0]),
        ([True, False], None, {}, "classification", 2, [1, 0]),
        ([0, 1], None, {"num_labels": 4}, "classification", 4, [0, 1]),
    ],
)
def test_task_type_inferred_from_training_labels(tmp_path: Path, tok, train: list, val: list | None, kwargs: dict,
                                                 task_type: str, num_labels: int, labels: list) -> None:
    rows = [{"text": f"i like {w}.", "label": y} for w, y in zip(TOPICS["fruits"], train, strict=False)]
    files = {"train_files": str(write_jsonl(tmp_path / "t.jsonl", rows))}
    if val is not None:
        files["val_files"] = str(write_jsonl(tmp_path / "v.jsonl", [{"text": "a cat.", "label": y} for y in val]))
    dm = text_data(tok, **files, shuffle=False, **kwargs)
    assert (dm.task_type, dm.num_labels) == (task_type, num_labels)
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].dtype == (torch.long if task_type == "classification" else torch.float32)
    assert batch["labels"].tolist() == labels
    assert (dm.hparams.task_type, dm.hparams.num_labels) == (task_type, num_labels)  # resolved into the hparams


def test_one_class_and_empty_training_files(tmp_path: Path, tok) -> None:
    one = write_jsonl(tmp_path / "one.jsonl", [{"text": "i like apple.", "label": 0}])
    with pytest.raises(DataError, match=re.escape(f"{one}: every label is 0; classification needs two classes")):
        text_data(tok, train_files=str(one))
    assert text_data(tok, train_files=str(one), num_labels=2).num_labels == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{empty}: no training rows")):
        text_data(tok, train_files=str(empty))


def test_tsv_labels_typed_like_json(tmp_path: Path, tok) -> None:
    cls, reg = tmp_path / "cls.tsv", tmp_path / "reg.csv"
    cls.write_text('sentence\tlabel\n"quoted" apple.\t1\nhere is saw.\t0\n', encoding="utf-8")
    reg.write_text('sentence,label\n"i like apple, pear.",0.5\nhere is saw.,3\n', encoding="utf-8")
    dm = text_data(tok, train_files=str(cls), text_field="sentence", shuffle=False)
    assert (dm.task_type, dm.num_labels) == ("classification", 2)
    assert dm.datasets["train"][0].input_ids[1:-1] == tok('"quoted" apple.', add_special_tokens=False)["input_ids"]
    dm = text_data(tok, train_files=str(reg), text_field="sentence", shuffle=False)
    assert dm.task_type == "regression" and [e.label for e in dm.datasets["train"]] == [0.5, 3.0]
    assert dm.datasets["train"][0].input_ids[1:-1] == tok("i like apple, pear.", add_special_tokens=False)["input_ids"]


def test_hf_dataset_saved_to_disk(tmp_path: Path, tok) -> None:
    import datasets

    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["no", "yes"])})
    rows = {"sentence1": ["i like apple.", "here is saw."], "sentence2": ["a pear.", "a cat."], "label": [1, 0]}
    bad = {**rows, "sentence2": ["a pear.", ""]}
    path = tmp_path / "glue_like"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features),
                          "validation": datasets.Dataset.from_dict(bad, features=features)}).save_to_disk(str(path))
    kwargs = dict(hf_dataset=str(path), text_field="sentence1", text_pair_field="sentence2")
    dm = text_data(tok, **kwargs)
    assert (dm.task_type, dm.num_labels, len(dm.datasets["train"])) == ("classification", 2, 2)
    with pytest.raises(DataError, match=re.escape(f"{path}[validation] row 1: field 'sentence2' is empty")):
        text_data(tok, **kwargs, hf_val_split="validation")


# --------------------------------------------------------------------------------------------- batches
def test_batches_exact(tmp_path: Path, tok) -> None:
    rows = [{"text": "i like apple.", "label": 1}, {"text": "we have no cat and dog.", "label": 0},
            {"text": "here is saw.", "label": 1}]
    dm = text_data(tok, train_files=str(write_jsonl(tmp_path / "t.jsonl", rows)), batch_size=2, shuffle=False)
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    assert (bos, eos, pad) == (1, 2, 0)
    a, b, c = (tok(r["text"], add_special_tokens=False)["input_ids"] for r in rows)
    first, second = list(dm.train_dataloader())
    width = 2 + max(len(a), len(b))
    expected = torch.tensor([[bos, *a, eos] + [pad] * (width - len(a) - 2),
                             [bos, *b, eos] + [pad] * (width - len(b) - 2)])  # (2, T)
    assert set(first) == {"input_ids", "attention_mask", "labels"}
    assert torch.equal(first["input_ids"], expected)
    assert torch.equal(first["attention_mask"], (expected != pad).long())
    assert torch.equal(first["labels"], torch.tensor([1, 0]))
    assert torch.equal(second["input_ids"], torch.tensor([[bos, *c, eos]]))
    assert tok.decode(first["input_ids"][1, : len(b) + 2]) == "<|begin_of_text|>we have no cat and dog.<|eot|>"


def test_text_pairs_and_longest_first_truncation(tmp_path: Path, tok) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text("sentence1\tsentence2\tlabel\ni like apple, pear and plum.\there is saw.\t1\n", encoding="utf-8")
    a = tok("i like apple, pear and plum.", add_special_tokens=False)["input_ids"]
    b = tok("here is saw.", add_special_tokens=False)["input_ids"]
    dm = text_data(tok, train_files=str(path), text_field="sentence1", text_pair_field="sentence2", num_labels=2)
    assert dm.datasets["train"][0].input_ids == [1, *a, 2, *b, 2]
    # 3 special tokens leave 7 of 8 + 4: the longer text is cut until the two are level (4 + 4), then the first.
    assert (len(a), len(b)) == (8, 4)
    with pytest.warns(UserWarning, match="1 inputs were cut to max_length"):
        dm = text_data(tok, train_files=str(path), text_field="sentence1", text_pair_field="sentence2", max_length=10,
                       num_labels=2)
    assert dm.datasets["train"][0].input_ids == [1, *a[:3], 2, *b, 2]


def test_tokenizer_with_its_own_special_tokens(tmp_path: Path) -> None:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "i", "like", "apple", "a", "cat", "is", "here", "."]
    bert = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    path = write_jsonl(tmp_path / "p.jsonl", [{"s1": "i like apple", "s2": "a cat is here .", "label": 0},
                                              {"s1": "a cat", "s2": "i like apple .", "label": 1}])
    dm = text_data(bert, train_files=str(path), text_field="s1", text_pair_field="s2", shuffle=False)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].tolist() == [[2, 5, 6, 7, 3, 8, 9, 10, 11, 12, 3], [2, 8, 9, 3, 5, 6, 7, 12, 3, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0]]
    dm = text_data(bert, train_files=str(path), text_field="s1", text_pair_field="s2", shuffle=False, max_length=8)
    assert dm.datasets["train"][0].input_ids == [2, 5, 6, 3, 8, 9, 10, 3]


# ------------------------------------------------------------------------------------ task-balanced sampling
def test_task_quotas_by_hand() -> None:
    sizes = [800, 100, 100]
    assert task_quotas(sizes, 20, None) == [7, 7, 6]  # uniform: 6.67 each, remainders to the earlier tasks
    assert task_quotas(sizes, 20, 1.0) == [16, 2, 2]  # proportional to size
    # T = 2: sqrt sizes 28.28, 10, 10 -> shares 11.72, 4.14, 4.14 -> 11, 4, 4 + the one left to the largest remainder
    assert task_quotas(sizes, 20, 2.0) == [12, 4, 4]
    assert task_quotas([5, 5], 3, 1.0) == [2, 1]


def multitask_files(tmp_path: Path) -> list[dict[str, Any]]:
    """Three tasks of 40, 20 and 4 rows whose texts (and so ids) are disjoint."""
    specs = []
    for name, topic, n in (("big", "fruits", 40), ("mid", "animals", 20), ("small", "colours", 4)):
        rows = [{"text": f"i like {w} and {v}.", "label": i % 2}
                for i, (w, v) in enumerate(itertools.islice(itertools.permutations(TOPICS[topic], 2), n))]
        val = [{"text": f"we have {w}.", "label": 1} for w in TOPICS[topic][:3]]
        specs.append({"name": name, "train_files": str(write_jsonl(tmp_path / f"{name}.jsonl", rows)),
                      "val_files": str(write_jsonl(tmp_path / f"{name}_val.jsonl", val))})
    return specs


def multitask(tmp_path: Path, tok, **kwargs: Any) -> MultiTaskDataModule:
    dm = MultiTaskDataModule(tasks=multitask_files(tmp_path), batch_size=4, **kwargs)
    dm._tokenizer = tok
    dm.setup()
    return dm


def rows_of(batch: dict[str, Any]) -> list[tuple[int, ...]]:
    return [tuple(r[m.bool()].tolist()) for r, m in zip(batch["input_ids"], batch["attention_mask"], strict=True)]


@pytest.mark.parametrize(("sampling", "expected"), [("uniform", [6, 5, 5]), ("temperature", [10, 5, 1])])
def test_task_balanced_epoch(tmp_path: Path, tok, sampling: str, expected: list[int]) -> None:
    dm = multitask(tmp_path, tok, task_sampling=sampling, temperature=1.0)
    # 10 + 5 + 1 batches make one pass over every task; uniform gives each task a third (the extra to the first).
    assert dm.quotas() == expected
    examples = {t.spec.name: {tuple(e.input_ids) for e in t.splits["train"]} for t in dm.loaded}
    loader = dm.train_dataloader()
    seen: Counter = Counter()
    per_task: dict[str, list[tuple[int, ...]]] = {name: [] for name in examples}
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        assert Counter(b["task"] for b in batches) == dict(zip(dm.task_names, expected, strict=True))
        for b in batches:
            assert len(rows_of(b)) == 4 and set(rows_of(b)) <= examples[b["task"]]  # one task per batch
            per_task[b["task"]].extend(rows_of(b))
        seen[epoch] = tuple(b["task"] for b in batches)
    assert seen[0] != seen[1]  # a new task order each epoch
    loader.load_state_dict({"epoch": 1, "batches": 3})  # what Lightning restores from a mid-epoch checkpoint
    loader.sampler.set_epoch(1)
    assert tuple(b["task"] for b in loader) == seen[1][3:]
    if sampling == "uniform":
        # the 4-row task is repeated: 5 batches of 4 per epoch = 5 full permutations, every row 5 times
        assert Counter(per_task["small"][:20]) == {row: 5 for row in examples["small"]}
        # the 40-row task continues where the last epoch stopped: 24 + 24 draws cover all 40 rows
        assert set(per_task["big"]) == examples["big"]
        assert Counter(per_task["big"][:40]) == {row: 1 for row in examples["big"]}


def test_sampler_ranks_share_the_task_and_split_the_rows() -> None:
    sizes, quotas = [40, 20, 4], [3, 3, 2]
    r0, r1 = (TaskBalancedSampler(sizes, 2, quotas, num_replicas=2, rank=r, seed=3) for r in (0, 1))
    for epoch in (0, 1):
        a, b = r0.schedule(epoch), r1.schedule(epoch)
        assert [t for t, _ in a] == [t for t, _ in b]
        for (t, x), (_, y) in zip(a, b, strict=True):
            if sizes[t] >= 4:  # a task of at least world * batch rows: disjoint slices of one permutation
                assert not set(x) & set(y)
    # resume: skipping the first n batches of an epoch gives exactly the rest
    full = list(iter_epoch(TaskBalancedSampler(sizes, 2, quotas, seed=3), 1))
    resumed = TaskBalancedSampler(sizes, 2, quotas, seed=3)
    resumed.skip_next(1, 3)
    assert list(iter_epoch(resumed, 1)) == full[3:]
    assert list(iter_epoch(resumed, 1)) == full  # the skip applies once


def iter_epoch(sampler: TaskBalancedSampler, epoch: int) -> list:
    sampler.set_epoch(epoch)
    return [(t, tuple(i)) for t, i in sampler]


class Recorder(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tasks: list[tuple[int, str]] = []
        self.val: list[tuple[int, str]] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.tasks.append((self.current_epoch, batch["task"]))
        return (self.w * batch["labels"].float()).sum()

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.val.append((dataloader_idx, batch["task"]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_trainer_keeps_the_sampler_and_validates_per_task(tmp_path: Path, tok) -> None:
    dm = multitask(tmp_path, tok)
    model = Recorder()
    Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0).fit(model, datamodule=dm)
    for epoch in (0, 1):
        counts = Counter(task for e, task in model.tasks if e == epoch)
        assert counts == {"big": 6, "mid": 5, "small": 5}
    assert [t for e, t in model.tasks if e == 0] != [t for e, t in model.tasks if e == 1]
    assert dm.val_task_names == ["big", "mid", "small"]
    assert sorted(set(model.val)) == [(0, "big"), (1, "mid"), (2, "small")]  # one loader per task, in order


def test_multitask_config_errors(tmp_path: Path) -> None:
    specs = multitask_files(tmp_path)
    with pytest.raises(ConfigError, match="task names must be unique"):
        MultiTaskDataModule(tasks=[specs[0], specs[0]])
    with pytest.raises(ConfigError, match=r"tasks\[1\]: task 'x' has unknown keys \['text_feild'\]"):
        MultiTaskDataModule(tasks=[specs[0], {"name": "x", "train_files": "a.jsonl", "text_feild": "s"}])
    with pytest.raises(ConfigError, match="task 'x' needs train_files or hf_dataset"):
        MultiTaskDataModule(tasks=[{"name": "x"}])
    with pytest.raises(ConfigError, match="needs tasks or a manifest"):
        MultiTaskDataModule()


def test_manifest_tasks(tok) -> None:
    dm = MultiTaskDataModule(manifest=str(SUITE / "tasks.json"), roles=["source"], batch_size=8)
    dm._tokenizer = tok
    dm.setup()
    assert dm.task_names == ["src_topic", "src_negation", "src_count", "src_marked"]
    assert dm.num_labels == {"src_topic": 5, "src_negation": 2, "src_count": 4, "src_marked": 2}
    one = text_data(tok, manifest=str(SUITE / "tasks.json"), task="tgt_count_topic")
    assert (one.task_type, one.num_labels) == ("regression", 1)
    assert {len(one.datasets[s]) for s in ("train", "val", "test")} == {800, 200}
    with pytest.raises(ConfigError, match="no task named 'nope'"):
        TextTaskDataModule(manifest=str(SUITE / "tasks.json"), task="nope")


# ------------------------------------------------------------------------------------------ synthetic suite
WORD_TOPIC = {w: t for t, words in TOPICS.items() for w in words}
LIVING = {"fruits", "animals"}


def planted(text: str) -> dict[str, Any]:
    """The planted features, read off the text independently of the generator's own parser."""
    words = re.findall(r"[a-z]+", text)
    items = [w for w in words if w in WORD_TOPIC]
    (topic,) = {WORD_TOPIC[w] for w in items}
    return {"topic": topic, "negated": "not" in words or "no" in words, "count": len(items),
            "marked": any(TOPICS[topic].index(w) < 2 for w in items)}


RULES = {  # the stated rules, written out again here
    "src_topic": lambda f: ["animals", "cities", "colours", "fruits", "tools"].index(f["topic"]),
    "src_negation": lambda f: int(f["negated"]),
    "src_count": lambda f: f["count"] - 1,
    "src_marked": lambda f: int(f["marked"]),
    "tgt_topic_neg": lambda f: int((f["topic"] in LIVING) != f["negated"]),
    "tgt_marked_count": lambda f: int(f["marked"] and f["count"] >= 3),
    "tgt_living_count": lambda f: 2 * (f["topic"] in LIVING) + (f["count"] >= 3),
    "tgt_count_topic": lambda f: f["count"] + 2.0 * (f["topic"] in {"colours", "cities"}) - f["negated"],
}
FEATURE_OF = {"src_topic": "topic", "src_negation": "negated", "src_count": "count", "src_marked": "marked"}


def suite_rows(folder: Path) -> dict[str, list[dict[str, Any]]]:
    return {f"{t}/{s}": [json.loads(line) for line in (folder / t / f"{s}.jsonl").read_text().splitlines()]
            for t in RULES for s in ("train", "val", "test")}


def test_suite_is_deterministic_and_the_shipped_data_is_seed_0(tmp_path: Path) -> None:
    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    synth.main(["--out", str(tmp_path / "a"), "--n-train", "800", "--n-val", "200", "--seed", "0"])
    synth.write_suite(tmp_path / "b", 800, 200, 200, seed=0)
    a = files(tmp_path / "a")
    assert a == files(tmp_path / "b") == files(SUITE)
    assert len(a) == 8 * 3 + 1 and sum(map(len, a.values())) < 700_000
    synth.write_suite(tmp_path / "c", 800, 200, 200, seed=1)
    assert files(tmp_path / "c")["src_topic/train.jsonl"] != a["src_topic/train.jsonl"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_suite_labels_follow_the_stated_rules() -> None:
    rows = suite_rows(SUITE)
    for key, split_rows in rows.items():
        task = key.split("/")[0]
        for i, row in enumerate(split_rows):
            expected = RULES[task](planted(row["text"]))
            assert row["label"] == expected and type(row["label"]) is type(expected), (key, i, row)
    manifest = json.loads((SUITE / "tasks.json").read_text())
    by_name = {t["name"]: t for t in manifest["tasks"]}
    assert list(by_name) == list(RULES)
    for name, t in by_name.items():
        assert t["role"] == ("source" if name.startswith("src_") else "target")
        assert t["files"] == {s: f"{name}/{s}.jsonl" for s in ("train", "val", "test")}
        labels = [r["label"] for s in ("train", "val", "test") for r in rows[f"{name}/{s}"]]
        if t["type"] == "classification":
            assert sorted(set(labels)) == list(range(t["num_labels"]))  # every class occurs
        else:
            assert t["num_labels"] == 1 and all(isinstance(y, float) for y in labels)
    targets = [t for t in manifest["tasks"] if t["role"] == "target"]
    assert sum(t["type"] == "classification" for t in targets) >= 2 and any(t["type"] == "regression" for t in targets)


def test_each_target_depends_on_exactly_its_stated_sources() -> None:
    """A target's label is a function of its sources' features, and of no proper subset of them."""
    rows = suite_rows(SUITE)
    manifest = json.loads((SUITE / "tasks.json").read_text())
    for t in (t for t in manifest["tasks"] if t["role"] == "target"):
        assert t["depends_on"] and set(t["depends_on"]) <= set(FEATURE_OF)
        feats = [(planted(r["text"]), r["label"]) for s in ("train", "val", "test") for r in rows[f"{t['name']}/{s}"]]

        def determined(features: tuple[str, ...], feats=feats) -> bool:
            seen: dict[tuple, Any] = {}
            return all(seen.setdefault(tuple(f[k] for k in features), y) == y for f, y in feats)

        needed = tuple(FEATURE_OF[s] for s in t["depends_on"])
        assert determined(needed), t["name"]
        for k in range(len(needed)):
            for subset in itertools.combinations(needed, k):
                assert not determined(subset), (t["name"], subset)


def test_features_are_independent_and_recovered_by_the_generator() -> None:
    rows = [r for r in suite_rows(SUITE)["tgt_count_topic/train"]]
    feats = [planted(r["text"]) for r in rows]
    combos = Counter((f["topic"], f["negated"], f["count"], f["marked"]) for f in feats)
    assert len(combos) == 5 * 2 * 4 * 2  # every combination of the four features occurs
    for f, r in zip(feats, rows, strict=True):
        g = synth.features_of(r["text"])
        assert (g.topic, g.negated, g.count, g.marked) == (f["topic"], f["negated"], f["count"], f["marked"])
    assert math.isclose(sum(f["negated"] for f in feats) / len(feats), 0.5, abs_tol=0.06)
