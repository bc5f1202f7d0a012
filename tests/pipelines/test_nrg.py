"""NRG (UNIREX's Normalized Relative Gain): hand-computed tables, file reading, the CLI and its errors."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from core.errors import ConfigError, DataError
from pipelines.nrg import MetricSpec, main, min_max, nrg_table, read_metrics_file

pytestmark = pytest.mark.usefixtures("one_thread")

RUNS = {
    "A": {"test/comp_aopc": 0.30, "test/suff_aopc": 0.10, "test/auprc": 0.6, "test/token_f1": 0.5,
          "test/iou_f1": 0.2, "test/accuracy": 0.90, "test/f1_macro": 0.88},
    "B": {"test/comp_aopc": 0.50, "test/suff_aopc": 0.30, "test/auprc": 0.8, "test/token_f1": 0.3,
          "test/iou_f1": 0.2, "test/accuracy": 0.80, "test/f1_macro": 0.78},
    "C": {"comp_aopc": 0.40, "suff_aopc": 0.20, "auprc": 0.7, "token_f1": 0.4,  # bare names are found too
          "iou_f1": 0.6, "accuracy": 0.85, "f1_macro": 0.98, "val/accuracy": 0.0},
}


def test_three_runs_by_hand() -> None:
    # comp_aopc (max) .3 .5 .4 -> 0, 1, .5    suff_aopc (min, (max - x)/(max - min)) .1 .3 .2 -> 1, 0, .5
    #   faithfulness: A .5, B .5, C .5
    # auprc .6 .8 .7 -> 0, 1, .5   token_f1 .5 .3 .4 -> 1, 0, .5   iou_f1 .2 .2 .6 -> 0, 0, 1
    #   plausibility: A 1/3, B 1/3, C 2/3
    # accuracy .9 .8 .85 -> 1, 0, .5   f1_macro .88 .78 .98 -> .5, 0, 1
    #   task: A .75, B 0, C .75
    # overall: A (.5 + 1/3 + .75)/3 = 19/36, B (.5 + 1/3 + 0)/3 = 10/36, C (.5 + 2/3 + .75)/3 = 23/36
    table = nrg_table(RUNS)
    assert table.runs == ["A", "B", "C"]
    expected_norm = {
        "A": {"comp_aopc": 0, "suff_aopc": 1, "auprc": 0, "token_f1": 1, "iou_f1": 0, "accuracy": 1, "f1_macro": .5},
        "B": {"comp_aopc": 1, "suff_aopc": 0, "auprc": 1, "token_f1": 0, "iou_f1": 0, "accuracy": 0, "f1_macro": 0},
        "C": {"comp_aopc": .5, "suff_aopc": .5, "auprc": .5, "token_f1": .5, "iou_f1": 1, "accuracy": .5,
              "f1_macro": 1},
    }
    for run, values in expected_norm.items():
        assert table.normalised[run] == pytest.approx(values)
    assert table.groups["A"] == pytest.approx({"faithfulness": .5, "plausibility": 1 / 3, "task": .75})
    assert table.groups["B"] == pytest.approx({"faithfulness": .5, "plausibility": 1 / 3, "task": 0})
    assert table.groups["C"] == pytest.approx({"faithfulness": .5, "plausibility": 2 / 3, "task": .75})
    assert table.overall == pytest.approx({"A": 19 / 36, "B": 10 / 36, "C": 23 / 36})
    assert table.keys["A"]["accuracy"] == "test/accuracy" and table.keys["C"]["accuracy"] == "accuracy"
    assert table.raw["C"]["accuracy"] == 0.85  # test split: val/accuracy is not read


def test_min_max_inversion_and_constant() -> None:
    assert min_max([1.0, 3.0, 2.0]) == [0.0, 1.0, 0.5]
    assert min_max([1.0, 3.0, 2.0], higher_is_better=False) == [1.0, 0.0, 0.5]
    assert min_max([0.4, 0.4, 0.4]) == [1.0, 1.0, 1.0]
    assert min_max([0.4, 0.4], higher_is_better=False) == [1.0, 1.0]
    table = nrg_table({"x": {"loss": 2.0, "acc": 0.5}, "y": {"loss": 1.0, "acc": 0.5}},
                      [MetricSpec("loss", "task", False), MetricSpec("acc", "task", True)])
    assert table.normalised == {"x": {"loss": 0.0, "acc": 1.0}, "y": {"loss": 1.0, "acc": 1.0}}
    assert table.overall == {"x": 0.5, "y": 1.0}


def test_groups_without_metrics_and_left_out_defaults() -> None:
    runs = {"a": {"test/accuracy": 0.5, "test/auprc": 0.2}, "b": {"test/accuracy": 0.7, "test/auprc": 0.4}}
    table = nrg_table(runs)
    assert table.group_names == ["plausibility", "task"]
    assert table.left_out == ["comp_aopc", "suff_aopc", "token_f1", "iou_f1", "f1_macro"]
    assert table.overall == {"a": 0.0, "b": 1.0}


def test_api_errors() -> None:
    with pytest.raises(ConfigError, match="at least 2 runs"):
        nrg_table({"only": RUNS["A"]})
    partial = {"A": RUNS["A"], "B": {k: v for k, v in RUNS["B"].items() if k != "test/iou_f1"}}
    with pytest.raises(DataError, match=r"runs/b/metrics.json: no metric 'iou_f1'"):
        nrg_table(partial, sources={"B": "runs/b/metrics.json"})
    with pytest.raises(DataError, match="must be a finite number"):
        nrg_table({"A": {"acc": 1.0}, "B": {"acc": float("nan")}}, [MetricSpec("acc", "task")])
    with pytest.raises(DataError, match="in none of the runs"):
        nrg_table(RUNS, [MetricSpec("bleu", "task")])
    with pytest.raises(DataError, match="none of the metrics"):
        nrg_table({"a": {"x": 1.0}, "b": {"x": 2.0}})
    with pytest.raises(ConfigError, match="NAME:GROUP"):
        MetricSpec.parse("acc:task:up")
    assert MetricSpec.parse("test/x:y:task:min") == MetricSpec("test/x:y", "task", False)


# ---------------------------------------------------------------------------------------------------- files


def _write_json(path: Path, values: dict[str, float]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))
    return path


CSV = """epoch,step,train/loss,val/accuracy,test/accuracy,test/auprc
0,9,0.9,0.5,,
0,19,0.7,,,
1,29,,0.6,,
1,29,,,0.75,0.4
1,29,,,,
"""


def test_csv_takes_the_last_non_empty_value(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text(CSV)
    values = read_metrics_file(tmp_path / "metrics.csv")
    assert values == {"epoch": 1.0, "step": 29.0, "train/loss": 0.7, "val/accuracy": 0.6, "test/accuracy": 0.75,
                      "test/auprc": 0.4}
    (tmp_path / "bad.csv").write_text("epoch,test/accuracy\n0,0.5\n1,high\n")
    with pytest.raises(DataError, match=r"bad.csv:3: metric 'test/accuracy' must be a number"):
        read_metrics_file(tmp_path / "bad.csv")


def test_folder_reads_metrics_json_else_newest_csv(tmp_path: Path) -> None:
    run = tmp_path / "run"
    old = run / "lightning_logs" / "version_0" / "metrics.csv"
    new = run / "lightning_logs" / "version_1" / "metrics.csv"
    for path, acc in ((old, 0.1), (new, 0.2)):
        path.parent.mkdir(parents=True)
        path.write_text(f"step,test/accuracy\n0,{acc}\n")
    os.utime(old, (1_000_000, 1_000_000))
    os.utime(new, (2_000_000, 2_000_000))
    assert read_metrics_file(run) == {"step": 0.0, "test/accuracy": 0.2}
    _write_json(run / "metrics.json", {"test/accuracy": 0.3})
    assert read_metrics_file(run) == {"test/accuracy": 0.3}  # a metrics.json wins over any CSV
    nested = _write_json(run / "lightning_logs" / "version_2" / "metrics.json", {"test/accuracy": 0.4})
    os.utime(run / "metrics.json", (1_000_000, 1_000_000))
    os.utime(nested, (3_000_000, 3_000_000))
    assert read_metrics_file(run) == {"test/accuracy": 0.4}  # the newest, where UNIREX's test writes it
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: folder holds no \*\*/metrics.json and no"):
        read_metrics_file(tmp_path / "empty")


def test_json_non_numeric_value_names_file_and_metric(tmp_path: Path) -> None:
    path = _write_json(tmp_path / "r" / "metrics.json", {"test/accuracy": "0.9"})
    with pytest.raises(DataError, match=r"metrics.json: metric 'test/accuracy' must be a number, got '0.9'"):
        read_metrics_file(path)
    path.write_text(json.dumps([{"test/accuracy": 0.9}, {"test/auprc/dataloader_idx_1": 0.5}]))
    assert read_metrics_file(path) == {"test/accuracy": 0.9, "test/auprc/dataloader_idx_1": 0.5}


# ------------------------------------------------------------------------------------------------------ CLI


def _three_runs(tmp_path: Path) -> list[str]:
    return [str(_write_json(tmp_path / name / "metrics.json", values)) for name, values in RUNS.items()]


def test_main_table_and_out_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nrg.json"
    assert main([*_three_runs(tmp_path), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "faithfulness", "plausibility", "task", "NRG", "comp_aopc", "suff_aopc",
                                "auprc", "token_f1", "iou_f1", "accuracy", "f1_macro"]
    assert [line.split()[0] for line in lines[2:]] == ["A", "B", "C"]  # names from the folders, order as given
    assert lines[2].split()[1:5] == ["0.5000", "0.3333", "0.7500", "0.5278"]
    assert len({len(line) for line in lines}) == 1  # aligned columns
    data = json.loads(out.read_text())
    assert data["runs"] == ["A", "B", "C"] and data["split"] == "test"
    assert data["overall"] == pytest.approx({"A": 19 / 36, "B": 10 / 36, "C": 23 / 36})
    assert data["normalised"]["C"]["iou_f1"] == 1.0 and data["raw"]["B"]["auprc"] == 0.8
    assert data["group_scores"]["B"]["task"] == 0.0
    assert data["metrics"][1] == {"name": "suff_aopc", "group": "faithfulness", "higher_is_better": False}


def test_main_metric_override_split_names_and_folder_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = tmp_path / "a"
    (a / "logs").mkdir(parents=True)
    (a / "logs" / "metrics.csv").write_text("step,val/loss,val/acc\n0,2.0,0.5\n1,1.0,\n")
    b = _write_json(tmp_path / "b" / "metrics.json", {"val/loss": 3.0, "val/acc": 0.7})
    argv = [str(a), str(b), "--split", "val", "--metric", "loss:fit:min", "--metric", "acc:task:max",
            "--names", "first", "second"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "task", "fit", "NRG", "loss", "acc"]
    # loss (min) 1.0 vs 3.0 -> 1, 0; acc 0.5 vs 0.7 -> 0, 1; groups task/fit; overall 0.5 each
    assert lines[2].split() == ["first", "0.0000", "1.0000", "0.5000", "1.0000", "0.5000"]
    assert lines[3].split() == ["second", "1.0000", "0.0000", "0.5000", "3.0000", "0.7000"]


def test_main_default_names_are_made_unique(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p1 = _write_json(tmp_path / "x" / "run" / "m.json", {"accuracy": 0.1})
    p2 = _write_json(tmp_path / "y" / "run" / "m.json", {"accuracy": 0.2})
    assert main([str(p1), str(p2)]) == 0
    captured = capsys.readouterr()
    assert [line.split()[0] for line in captured.out.splitlines()[2:]] == ["run", "run-2"]
    assert "note: default metric(s) comp_aopc" in captured.err


@pytest.mark.parametrize(
    ("argv_of", "message"),
    [
        (lambda p: [p[0]], "at least 2 runs"),
        (lambda p: [p[0], p[1], "--names", "one"], "--names must give 2"),
        (lambda p: [p[0], p[1], "--metric", "accuracy:task"], "NAME:GROUP:max|min"),
        (lambda p: [p[0], p[3]], "B/metrics.json: no metric 'iou_f1'"),
        (lambda p: [p[0], p[4]], "metric 'test/auprc' must be a number"),
        (lambda p: [p[0], p[5]], "metric 'test/auprc' must be a finite number"),
        (lambda p: [p[0], p[6]], "metrics.json and no"),
        (lambda p: [p[0], p[6] + "/nope.json"], "no such file"),
    ],
)
def test_main_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv_of: Callable[[list[str]], list[str]], message: str
) -> None:
    paths = _three_runs(tmp_path)
    paths.append(str(_write_json(tmp_path / "B" / "metrics.json",
                                 {k: v for k, v in RUNS["B"].items() if k != "test/iou_f1"})))
    paths.append(str(_write_json(tmp_path / "D" / "metrics.json", {**RUNS["B"], "test/auprc": None})))
    paths.append(str(_write_json(tmp_path / "E" / "metrics.json", {**RUNS["B"], "test/auprc": float("nan")})))
    (tmp_path / "empty").mkdir()
    paths.append(str(tmp_path / "empty"))
    out = tmp_path / "never.json"
    assert main([*argv_of(paths), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not out.exists()
