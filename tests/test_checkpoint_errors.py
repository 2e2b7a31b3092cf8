"""Bad checkpoints: each gives exit 2 and one clear line on stderr through the CLI (its entry point called in this
process); nothing in a file runs.

Checkpoints here are built from an untrained `EmoNet` state dict, so these tests need no golden data.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from emoengine.errors import UserInputError
from emoengine.export.checkpoint import load_emonet
from emoengine.export.emonet import EmoNet


class MakesMarker:
    """Unpickling this with a normal unpickler creates the folder `marker`: code, not weights."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def upstream_state(num_classes: int = 8) -> dict[str, torch.Tensor]:
    return {"module." + k: v for k, v in EmoNet(num_classes).state_dict().items()}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """name -> (path to a bad --weights value, extra args, text the error line must contain)."""
    d = tmp_path_factory.mktemp("bad")
    state = upstream_state(8)
    (d / "notes.txt").write_text("these are not weights\n")
    (d / "face.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    wrong_keys = dict(state)
    for key in ("module.conv1.weight", "module.bn1.running_mean"):
        del wrong_keys[key]
    wrong_keys["module.classifier.weight"] = torch.zeros(3)
    torch.save(wrong_keys, d / "wrong_keys.pth")
    wrong_shape = dict(state, **{"module.conv1.weight": torch.zeros(64, 3, 5, 5)})
    torch.save(wrong_shape, d / "wrong_shape.pth")
    torch.save(upstream_state(5), d / "five.pth")
    torch.save([1, 2, 3], d / "a_list.pth")
    torch.save({"weights": MakesMarker(d / "MARKER_zip")}, d / "code.pth")
    with open(d / "code.pkl", "wb") as f:
        pickle.dump({"weights": MakesMarker(d / "MARKER_pickle")}, f, protocol=2)
    return d, {
        "missing": (d / "nope.pth", [], "no such checkpoint file"),
        "text": (d / "notes.txt", [], "not a PyTorch checkpoint"),
        "image": (d / "face.png", [], "not a PyTorch checkpoint"),
        "not_state_dict": (d / "a_list.pth", [], "not a state dict"),
        "wrong_keys": (d / "wrong_keys.pth", [], "missing key(s): conv1.weight, bn1.running_mean"),
        "wrong_shape": (d / "wrong_shape.pth", [], "conv1.weight is (64, 3, 5, 5)"),
        "code_zip": (d / "code.pth", [], "refused as unsafe"),
        "code_pickle": (d / "code.pkl", [], "refused as unsafe"),
        "classes_disagree": (d / "five.pth", ["--classes", "8"], "--classes 8 disagrees"),
    }


@pytest.mark.parametrize("command", ["export", "run"])
@pytest.mark.parametrize("case", ["missing", "text", "image", "not_state_dict", "wrong_keys", "wrong_shape",
                                  "code_zip", "code_pickle", "classes_disagree"])
def test_bad_weights_exit_2_with_one_line(case, command, bad_files, cli_in_process, tmp_path):
    folder, cases = bad_files
    weights, extra, expected = cases[case]
    if command == "run":
        import cv2

        from emoengine.engine.run.demo import shipped_photo

        photo = tmp_path / "face.jpg"
        cv2.imwrite(str(photo), shipped_photo("Tom_Hanks_54745.png")[:, :, ::-1])
        extra = [str(photo), "--out", str(tmp_path / "out"), *extra]
    result = cli_in_process(command, "--weights", str(weights), *extra, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("emoengine: error: ") and expected in lines[0], lines[0]
    if case == "wrong_keys":
        assert "unexpected key(s): classifier.weight" in lines[0]
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not (folder / "MARKER_zip").exists() and not (folder / "MARKER_pickle").exists()


def test_code_payload_is_real(tmp_path):
    """Guard against a vacuous test: the same payload does run under an unrestricted unpickler."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(MakesMarker(marker)))
    assert marker.is_dir()


def test_accepted_variants_load_the_same_weights(tmp_path):
    """Nested under "state_dict", no `module.` prefix, float16, num_batches_tracked absent: all fine."""
    plain = EmoNet(5).state_dict()
    variant = {k: v.half() if v.is_floating_point() else v for k, v in plain.items()
               if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": variant, "epoch": 7}, tmp_path / "variant.pth")
    loaded = load_emonet(tmp_path / "variant.pth", classes=5)
    assert loaded.num_classes == 5 and loaded.class_names[-1] == "Fear" and not loaded.is_random
    assert len(loaded.sha256) == 64 and loaded.source.endswith("variant.pth")
    for key, value in loaded.model.state_dict().items():
        if value.is_floating_point():
            assert value.dtype == torch.float32
            assert torch.equal(value, plain[key].half().float()), key
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())


@pytest.mark.parametrize("mutate, expected", [
    (lambda s: s.update({"module.emo_fc_2.3.weight": torch.zeros(9, 128)}), "7 or 10 rows"),
    (lambda s: s.update({"module.bl0.bias": torch.full((256,), float("nan"))}), "non-finite"),
    (lambda s: s.update({"module.bl0.bias": "text"}), "not a tensor"),
], ids=["class_count", "nan", "non_tensor"])
def test_more_bad_contents_raise_user_input_error(tmp_path, mutate, expected):
    state = upstream_state(8)
    mutate(state)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserInputError, match=expected):
        load_emonet(tmp_path / "bad.pth")


def test_truncated_and_empty_files(tmp_path):
    torch.save(upstream_state(8), tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:5000])
    (tmp_path / "empty.pth").write_bytes(b"")
    for name in ("cut.pth", "empty.pth"):
        with pytest.raises(UserInputError, match="not a PyTorch checkpoint"):
            load_emonet(tmp_path / name)
    with pytest.raises(UserInputError, match="5 or 8"):
        load_emonet(tmp_path / "full.pth", classes=7)
