"""`emoengine batch` without Ray: what INPUTS name, folder names per video, what counts as complete, and the
one line a machine without Ray gets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from emoengine.engine.batch.videos import list_inputs
from emoengine.engine.run.resume import complete_summary
from emoengine.errors import UserInputError


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folders_globs_and_path_lists_name_each_video_once(tmp_path):
    a = touch(tmp_path / "in" / "a.mp4")
    b = touch(tmp_path / "in" / "b.MOV")
    touch(tmp_path / "in" / "notes.txt")                       # not a video: a folder lists videos only
    c = touch(tmp_path / "deep" / "x" / "c.mkv")
    lst = tmp_path / "list.txt"
    lst.write_text("# clips\n\nin/a.mp4\ndeep/x/c.mkv\n")        # relative to the list's folder
    items = list_inputs([str(tmp_path / "in"), str(tmp_path / "deep" / "**" / "*.mkv"), str(lst)])
    assert [i.path for i in items] == [str(a.resolve()), str(b.resolve()), str(c.resolve())]
    assert [i.name for i in items] == ["a", "b", "c"]


def test_colliding_stems_get_distinct_stable_names(tmp_path):
    one, two = touch(tmp_path / "d1" / "take.mp4"), touch(tmp_path / "d2" / "take.mp4")
    names = [i.name for i in list_inputs([str(one), str(two)])]
    assert len(set(names)) == 2 and all(n.startswith("take-") for n in names)
    assert names == [i.name for i in list_inputs([str(one), str(two)])]


@pytest.mark.parametrize("spec", ["missing-folder", "*.nothing-matches"])
def test_nothing_to_do_is_a_one_line_input_error(tmp_path, spec, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserInputError):
        list_inputs([spec])


def test_complete_means_summary_and_every_file_it_lists(tmp_path):
    d = tmp_path / "v"
    assert complete_summary(d) is None
    touch(d / "predictions.csv")
    (d / "summary.json").write_text(json.dumps({"files": ["predictions.csv", "summary.json", "timeline.png"]}))
    assert complete_summary(d) is None                                   # timeline.png missing: run it again
    touch(d / "timeline.png")
    assert complete_summary(d) is not None


def test_batch_without_ray_says_how_to_get_it(tmp_path):
    """Ray hidden from this interpreter (sys.modules['ray'] = None), whether or not it is installed."""
    clip = touch(tmp_path / "clip.mp4")
    code = ("import sys; sys.modules['ray'] = None\n"
            "from emoengine.cli.main import main\n"
            f"main(['batch', {str(clip)!r}, '--weights', 'random', '--out', {str(tmp_path / 'out')!r}])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ['emoengine: error: emoengine batch needs Ray Data and pyarrow: '
                                             'pip install "emoengine[cluster]"']
    assert not (tmp_path / "out").exists()
