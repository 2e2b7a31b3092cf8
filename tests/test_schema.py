"""Damaged run files (engine.outputs.schema): `emoengine report`, `run --resume`'s check and a batch's aggregation
each answer exit 2 with one line naming the file and what it lacks, never a parser's traceback."""

from __future__ import annotations

import json

import pytest

from emoengine.cli.main import main
from emoengine.contract import CLASS_NAMES_8
from emoengine.engine.outputs.schema import predictions_header, read_batch_summary
from emoengine.engine.run.resume import complete_summary
from emoengine.errors import UserInputError


def run_folder(folder, header=None, rows=(), summary=None):
    """A finished run's predictions.csv and summary.json, written by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    header = predictions_header(CLASS_NAMES_8) if header is None else header
    lines = [",".join(header)] + [",".join(map(str, r)) for r in rows]
    (folder / "predictions.csv").write_text("\n".join(lines) + "\n")
    default = {"input": "clip.mp4", "input_kind": "video", "fps": 25.0, "frames": 2, "faces": len(rows),
               "classes": list(CLASS_NAMES_8), "files": ["predictions.csv", "summary.json"]}
    (folder / "summary.json").write_text(json.dumps(default if summary is None else summary))
    return folder


def report(folder, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as e:
        main(["report", str(folder)])
    return e.value.code, capsys.readouterr().err.strip().splitlines()


def test_a_predictions_csv_without_its_columns_is_exit_2_naming_the_file(tmp_path, capsys):
    folder = run_folder(tmp_path / "run", header=["frame", "time_s", "x1"], rows=[(0, 0.0, 1.0)])
    code, lines = report(folder, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert str(folder / "predictions.csv") in lines[0] and "face_id" in lines[0] and "p_<class>" in lines[0]
    assert not (folder / "report.html").exists()


def test_a_predictions_csv_with_a_bad_value_is_exit_2(tmp_path, capsys):
    row = [0, 0.0, "one", 0, 0, 1, 1, 0.9, "happy", *[0.125] * 8, 0.1, 0.2]
    code, lines = report(run_folder(tmp_path / "run", rows=[row]), capsys)
    assert code == 2 and len(lines) == 1 and "predictions.csv is damaged" in lines[0], lines


@pytest.mark.parametrize("content, what", [("[1, 2]", "not a JSON object"), ("{", "cannot read"),
                                           ('{"files": "predictions.csv"}', "'files' is not a list"),
                                           ('{"frames": "many"}', "'frames' is not a number")])
def test_a_damaged_summary_is_exit_2_naming_what_is_wrong(tmp_path, capsys, content, what):
    folder = run_folder(tmp_path / "run")
    (folder / "summary.json").write_text(content)
    code, lines = report(folder, capsys)
    assert code == 2 and len(lines) == 1 and what in lines[0] and "summary.json" in lines[0], lines
    with pytest.raises(UserInputError, match="summary.json"):   # --resume and batch planning read it the same way
        complete_summary(folder)


def test_a_good_folder_still_reports(tmp_path, capsys):
    row = [0, 0.04, 0, 0, 0, 10, 10, 0.9, "happy", *[0.125] * 8, 0.1, 0.2]
    code, _ = report(run_folder(tmp_path / "run", rows=[row]), capsys)
    assert code == 0 and (tmp_path / "run" / "report.html").is_file()


def test_batch_aggregation_refuses_a_damaged_predictions_csv(tmp_path):
    pytest.importorskip("pyarrow", reason="batch aggregation writes predictions.parquet (pyarrow)")
    from emoengine.engine.batch.videos import write_predictions_parquet

    run_folder(tmp_path / "a", header=["frame", "valence"])
    with pytest.raises(UserInputError, match=r"a/predictions.csv lacks the column\(s\) time_s, face_id"):
        write_predictions_parquet(tmp_path, ["a"])
    assert not (tmp_path / "predictions.parquet").exists()


def test_a_batch_row_without_its_keys_is_named(tmp_path, capsys):
    (tmp_path / "batch_summary.json").write_text(json.dumps({"videos": [{"video": "a", "status": "done"},
                                                                        {"video": "b"}]}))
    with pytest.raises(UserInputError, match="video row 1 lacks status"):
        read_batch_summary(tmp_path)
    code, lines = report(tmp_path, capsys)
    assert code == 2 and len(lines) == 1 and "batch_summary.json" in lines[0], lines
