"""One comparator and one tolerance table, by precision: how far a backend's outputs may be from a reference.

In the spirit of Polygraphy's comparator: runners run on the same crops, per-output tolerances, and a result that
is true or false with the table that decided it (worst |a-b| and worst |a-b| / max|ref| per output, expression
top-1 agreement). The ONNX export's verification, the fp16 export, the int8 search, `emoengine bench` (CPU and
GPU rows alike) and the tests all judge with this table, so a tolerance is changed in one place.

The measure is `relative_diff`: max|got - ref| / max|ref| over a whole output, one number that ignores the
output's scale. fp32 backends must stay within 1e-3 of it. fp16/bf16 have per-output tolerances, measured (see
the comments below and export/fp16.py). int8 is judged by expression top-1 agreement, not by closeness.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

# fp32: worst |a-b| / max|ref| per output: what `export` verifies and what every fp32 backend is held to
FP32_TOLERANCE = 1e-3

# fp16 parity tolerances, worst |fp16 - fp32| / max|fp32| per output. Measured with export.fp16.emulate_fp16 on
# the golden 8-class weights and crops: expression 3.5e-3, valence 2.9e-3, arousal 3.2e-3 (4.9e-3 with the mask
# fp32), heatmap 3.7e-3, conv1_mean 1.1e-3, emo_conv1_mean 7.6e-3; the tolerances give 2-3x headroom.
# The same on the whole PyTorch model in half precision (torch 2.13 CPU half arithmetic, golden crops; what
# torch-cuda:fp16 computes): expression 3.6e-3, valence 5.4e-3, arousal 3.8e-3, heatmap 4.0e-3, conv1_mean
# 1.1e-3, emo_conv1_mean 6.7e-3: within the same tolerances.
FP16_TOLERANCE = {"expression": 1e-2, "valence": 1e-2, "arousal": 1.5e-2, "heatmap": 1e-2,
                  "conv1_mean": 5e-3, "emo_conv1_mean": 2e-2, "conv1": 5e-3, "emo_conv1": 2e-2}
# bfloat16 keeps 8 mantissa bits to fp16's 11, and it shows: torch 2.13 CPU bf16 on the golden crops gave
# expression 6.6e-2, valence 4.9e-2, arousal 1.2e-1, heatmap 5.1e-2, conv1_mean 8.2e-3, emo_conv1_mean 6.7e-2,
# 10-30x fp16's error (and up to 1.5e-1 on the first 2 crops alone: the relative error depends on the crops).
# Tolerances ~2x the 4-crop numbers; prefer fp16 (same tensor-core speed, no overflow in this network).
BF16_TOLERANCE = {"expression": 0.15, "valence": 0.1, "arousal": 0.25, "heatmap": 0.1,
                  "conv1_mean": 2e-2, "emo_conv1_mean": 0.15, "conv1": 2e-2, "emo_conv1": 0.15}
# int8: expression top-1 agreement with the fp32 reference (closeness is reported, not judged)
INT8_TOP1_TARGET = 0.97
# a tap from any backend against upstream's, worst |got - golden| / the layer's largest |golden| (issue 13)
TAP_TOLERANCE = 1e-3
# Our PyTorch EmoNet against upstream's recorded outputs (golden data): the same fp32 arithmetic on the same
# device, only the order of operations may differ, so 10x tighter than what another fp32 backend is held to.
GOLDEN_TORCH_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Tolerance:
    """What one precision is held to: a worst relative difference per output (`default` for an output the
    table does not name, e.g. a tap added later), or, where `top1` is set, expression top-1 agreement."""

    per_output: dict[str, float] = field(default_factory=dict)
    default: float | None = None
    top1: float | None = None

    def limit(self, output: str) -> float | None:
        return self.per_output.get(output, self.default)


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(default=FP32_TOLERANCE),
    # an output missing from the fp16 table gets fp16's usual 1e-2 (what the fp16 export always used)
    "fp16": Tolerance(FP16_TOLERANCE, default=1e-2),
    # ... and from the bf16 table the largest feature-map tolerance of bf16 (taps are feature maps)
    "bf16": Tolerance(BF16_TOLERANCE, default=0.15),
    "int8": Tolerance(top1=INT8_TOP1_TARGET),
}


def tolerance(precision: str) -> Tolerance:
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise ValueError(f"no tolerance for precision {precision!r} (known: {', '.join(TOLERANCES)})") from None


def relative_diff(got: np.ndarray, reference: np.ndarray) -> float:
    """max|got - ref| / max|ref|: one number per output that ignores its scale (inf on a shape mismatch)."""
    got, reference = np.asarray(got, np.float64), np.asarray(reference, np.float64)
    if got.shape != reference.shape:
        return float("inf")
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    return float(np.abs(got - reference).max() / (scale or 1.0)) if reference.size else 0.0


def within(diffs: dict[str, float], precision: str) -> dict[str, float]:
    """The outputs of `diffs` (name -> relative_diff) over their tolerance at `precision` (empty: all pass).
    NaN is never within a tolerance."""
    tol = tolerance(precision)
    return {name: d for name, d in diffs.items()
            if (limit := tol.limit(name)) is not None and not d <= limit}


def logit_margins(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 expression logit per input: how close a prediction is to flipping."""
    top = np.sort(logits, axis=1)
    return top[:, -1] - top[:, -2]


class OutputStats(TypedDict):
    """How one output compares with the reference (Comparison.outputs), with its tolerance (None: not judged)."""

    max_abs: float
    max_rel: float
    mean_abs: float
    tolerance: float | None


@dataclass
class Comparison:
    """The verdict on one set of outputs against the reference, and the numbers behind it."""

    precision: str
    outputs: dict[str, OutputStats]          # name -> max_abs, max_rel, mean_abs, tolerance
    worst_rel: float
    top1_agreement: float | None              # None where there is no `expression` output
    flipped_reference_margins: list[float]    # the reference's logit margins where top-1 flipped
    inputs: int
    passed: bool

    def __bool__(self) -> bool:
        return self.passed

    def failures(self) -> dict[str, float]:
        """Outputs over their tolerance (name -> max_rel)."""
        return within({k: v["max_rel"] for k, v in self.outputs.items()}, self.precision)

    def table(self) -> str:
        """One line per output (max abs, max rel, its tolerance, ok or OVER), then the verdict: for a message."""
        lines = [f"{name}: max abs {v['max_abs']:.2e}, max rel {v['max_rel']:.2e} "
                 f"(tolerance {'-' if v['tolerance'] is None else format(v['tolerance'], 'g')}) "
                 f"{'OVER' if name in self.failures() else 'ok'}" for name, v in self.outputs.items()]
        if self.top1_agreement is not None:
            lines.append(f"expression top-1 agreement {self.top1_agreement:.2%} on {self.inputs} inputs")
        return "\n".join([*lines, f"{self.precision}: {'PASS' if self.passed else 'FAIL'}"])

    def worst(self) -> str:
        """Why it failed in a few words: the output furthest over its tolerance, or the top-1 agreement."""
        bad = self.failures()
        if bad:
            name = max(bad, key=lambda n: bad[n] / (self.outputs[n]["tolerance"] or 1.0))
            return f"{name} off by {bad[name]:.2e} of its magnitude (tolerance {self.outputs[name]['tolerance']:g})"
        if not self.outputs:
            return "no output in common with the reference"
        agreement = "none" if self.top1_agreement is None else f"{self.top1_agreement:.1%}"
        return f"expression top-1 agreement {agreement} (target {tolerance(self.precision).top1})"


def _output_stats(got: np.ndarray, ref: np.ndarray, limit: float | None) -> OutputStats:
    a, r = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    same = a.shape == r.shape
    return {"max_abs": float(np.abs(a - r).max()) if same and r.size else (0.0 if same else float("inf")),
            "max_rel": relative_diff(a, r),
            "mean_abs": float(np.abs(a - r).mean()) if same and r.size else (0.0 if same else float("inf")),
            "tolerance": limit}


def compare(got: dict[str, np.ndarray], reference: dict[str, np.ndarray], precision: str) -> Comparison:
    """Every output the reference and `got` share, judged by `precision`'s row of TOLERANCES: per-output
    relative difference for fp32/fp16/bf16, expression top-1 agreement for int8."""
    tol = tolerance(precision)
    outputs = {name: _output_stats(got[name], ref, tol.limit(name)) for name, ref in reference.items()
               if name in got}
    top1, flipped_margins = None, []
    if "expression" in outputs and np.shape(got["expression"]) == np.shape(reference["expression"]):
        ref_top, got_top = reference["expression"].argmax(1), np.asarray(got["expression"]).argmax(1)
        flipped = ref_top != got_top
        top1 = round(float((~flipped).mean()), 4) if len(flipped) else 1.0
        flipped_margins = sorted(round(float(m), 4) for m in logit_margins(reference["expression"])[flipped])
    worst = max((v["max_rel"] for v in outputs.values()), default=0.0)
    if tol.top1 is not None:
        passed = top1 is not None and top1 >= tol.top1
    else:
        passed = bool(outputs) and not within({k: v["max_rel"] for k, v in outputs.items()}, precision)
    inputs = len(next(iter(reference.values()))) if reference else 0
    return Comparison(precision, outputs, worst, top1, flipped_margins, inputs, passed)


def outputs_of(runner, crops: np.ndarray) -> dict[str, np.ndarray]:
    """A runner's outputs on `crops` by name: anything with `infer` (an engine.backends Runner, EmoNet's torch
    graph in a TorchRunner), or a callable from crops to outputs (a model file run by export.fp16.run_cpu)."""
    out = runner.infer(crops) if hasattr(runner, "infer") else runner(crops)
    return {name: np.asarray(value) for name, value in out.items()}


def compare_runners(runner, reference, crops: np.ndarray, precision: str) -> Comparison:
    """Run `runner` and `reference` (a runner, or its outputs on these crops already) on the same `crops`, and
    judge `runner`'s outputs by `precision`'s row of TOLERANCES."""
    ref = dict(reference) if isinstance(reference, Mapping) else outputs_of(reference, crops)
    return compare(outputs_of(runner, crops), ref, precision)
