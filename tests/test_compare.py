"""The one comparator (emoengine.compare): runners run on the same crops, every output judged against its row of
the tolerance table, a verdict that is true or false with the table behind it; and export verification refusing a
model that disagrees with PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from emoengine.compare import FP16_TOLERANCE, FP32_TOLERANCE, compare, compare_runners, tolerance


class Recording:
    """A runner that returns fixed outputs (scaled per output) and remembers the crops it was given."""

    def __init__(self, outputs: dict[str, np.ndarray], scale: dict[str, float] | None = None) -> None:
        self.outputs, self.scale, self.seen = outputs, scale or {}, []

    def infer(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        self.seen.append(crops)
        return {k: v * self.scale.get(k, 1.0) for k, v in self.outputs.items()}


def outputs(n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"expression": rng.normal(size=(n, 8)).astype(np.float32), "valence": rng.normal(size=n),
            "heatmap": rng.random((n, 68, 4, 4), dtype=np.float32)}


def test_compare_runners_runs_both_on_the_same_crops_and_is_true_within_the_table():
    crops = np.zeros((4, 8, 8, 3), np.uint8)
    ref = outputs()
    got, reference = Recording(ref, {"valence": 1 + FP32_TOLERANCE / 2}), Recording(ref)
    verdict = compare_runners(got, reference, crops, "fp32")
    assert got.seen[0] is crops and reference.seen[0] is crops
    assert verdict and verdict.passed and verdict.failures() == {} and verdict.top1_agreement == 1.0
    assert verdict.outputs["valence"]["max_rel"] == pytest.approx(FP32_TOLERANCE / 2, rel=1e-3)
    assert verdict.outputs["valence"]["tolerance"] == FP32_TOLERANCE
    table = verdict.table()
    assert all(f"{name}: max abs" in table for name in ref) and table.endswith("fp32: PASS")
    # outputs given instead of a reference runner: the same verdict
    assert compare_runners(got, ref, crops, "fp32").outputs == verdict.outputs


def test_one_output_over_its_tolerance_makes_the_verdict_false_and_names_it():
    ref = outputs()
    got = {**ref, "heatmap": ref["heatmap"] * (1 + 2 * FP32_TOLERANCE)}
    verdict = compare(got, ref, "fp32")
    assert not verdict and list(verdict.failures()) == ["heatmap"]
    assert "heatmap: max abs" in verdict.table() and "OVER" in verdict.table() and "fp32: FAIL" in verdict.table()
    assert verdict.worst().startswith("heatmap off by 2.00e-03 of its magnitude (tolerance 0.001)")
    assert compare(got, ref, "fp16")   # the same difference is within fp16's row
    assert tolerance("fp16").limit("heatmap") == FP16_TOLERANCE["heatmap"]


@pytest.mark.parametrize("broken", ["nan", "shape"])
def test_nan_or_a_wrong_shape_never_passes(broken):
    ref = outputs()
    bad = np.full_like(ref["valence"], np.nan) if broken == "nan" else ref["valence"][:2]
    verdict = compare({**ref, "valence": bad}, ref, "fp16")
    assert not verdict and "valence" in verdict.failures()


def test_int8_is_judged_by_top1_agreement():
    ref = outputs(n=100)
    flipped = ref["expression"].copy()
    flipped[:5] = -flipped[:5]   # 5 of 100 top-1 classes change
    verdict = compare({**ref, "expression": flipped}, ref, "int8")
    assert verdict.top1_agreement == 0.95 and not verdict and "top-1 agreement 95.0% (target 0.97)" in verdict.worst()
    assert compare(ref, ref, "int8")


def test_export_verification_refuses_a_model_that_disagrees_with_pytorch(random_onnx_full):
    """The exporter's check, with the comparator: the session's random-weight export against PyTorch with other
    weights (a freshly built EmoNet) is refused, naming an output and the fp32 tolerance."""
    pytest.importorskip("torch", reason="the check runs PyTorch")
    from emoengine.errors import RunFailure
    from emoengine.export.emonet import EmoNet, EmoNetGraph
    from emoengine.export.onnx_export import ExportReport, _verify

    other = EmoNetGraph(EmoNet(8), full_taps=True).eval()
    report = ExportReport(random_onnx_full, 0, 0.0, {}, other.output_names)
    with pytest.raises(RunFailure, match=r"disagrees with PyTorch under ONNX Runtime: \w+ off by \S+ of its "
                                         r"magnitude \(tolerance 0\.001\); not written"):
        _verify(other, random_onnx_full, None, report)
    assert set(report.worst_rel_diff) == set(other.output_names)
    assert max(report.worst_rel_diff.values()) > FP32_TOLERANCE
