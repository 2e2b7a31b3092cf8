"""Which EmoNet layer groups an int8 model keeps in float: measured, not guessed (`export --min-agreement X`).

The int8 frontier (benchmarks/int8_frontier.py) and the export share two pieces:
- `AgreementCheck`: expression top-1 agreement of a model with reference outputs on fixed crops (the one
  comparator, emoengine.compare, judged as int8);
- `search_keep_float`: a greedy walk along the frontier over export.quantize.LAYER_GROUPS. It starts from
  everything in int8; while the agreement is below the target it tries keeping each remaining group in float
  and keeps the one that agrees best (ties: the group with fewer modules, the cheaper one to leave in float).
  It stops at the first recipe that meets the target, or when every group is float (then it says so).
Each recipe is made by the caller (`make(keep_float) -> path`), so the export quantises into a scratch folder
and the frontier into models/, with the calibration ranges shared between recipes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emoengine.errors import UserInputError


@dataclass(frozen=True)
class Trial:
    keep_float: tuple[str, ...]
    agreement: float
    path: Path

    def summary(self) -> dict:
        return {"keep_float": list(self.keep_float), "top1_agreement": self.agreement}


class AgreementCheck:
    """Expression top-1 agreement of a model file with `reference` (outputs on `crops`), on ONNX Runtime CPU."""

    def __init__(self, crops: np.ndarray, reference: dict[str, np.ndarray]) -> None:
        self.crops, self.reference = crops, reference

    @classmethod
    def against_model(cls, reference_path: Path, crops: np.ndarray) -> AgreementCheck:
        """The reference being another model's outputs on the same crops (the fp32 export, for int8)."""
        from emoengine.engine.backends import OrtRunner

        with OrtRunner(reference_path) as runner:
            return cls(crops, runner.infer(crops))

    def __call__(self, path: Path) -> float:
        from emoengine.compare import compare_runners
        from emoengine.engine.backends import OrtRunner

        with OrtRunner(path) as runner:
            agreement = compare_runners(runner, self.reference, self.crops, "int8").top1_agreement
        return 1.0 if agreement is None else agreement


def check_min_agreement(value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise UserInputError(f"min_agreement is a fraction of crops between 0 and 1 (e.g. 0.97), not {value:g}",
                             options=("min_agreement",))


def search_keep_float(make: Callable[[tuple[str, ...]], Path], agreement: Callable[[Path], float],
                      min_agreement: float, groups: dict[str, tuple[str, ...]] | None = None,
                      say: Callable[[str], None] = lambda _m: None) -> tuple[Trial, list[Trial]]:
    """(the chosen recipe, every recipe tried in order): see the module docstring."""
    from emoengine.export.quantize import LAYER_GROUPS

    groups = LAYER_GROUPS if groups is None else groups
    check_min_agreement(min_agreement)

    def attempt(keep: tuple[str, ...]) -> Trial:
        path = make(keep)
        trial = Trial(keep, agreement(path), path)
        say(f"  float {', '.join(keep) or 'none'}: top-1 agreement {trial.agreement:.1%}")
        trials.append(trial)
        return trial

    trials: list[Trial] = []
    best = attempt(())
    while best.agreement < min_agreement:
        covered = {m for g in best.keep_float for m in groups[g]}
        # a group whose modules are all float already (`fc` inside `emotion`) changes nothing
        left = [g for g in groups if g not in best.keep_float and not set(groups[g]) <= covered]
        if not left:
            break
        step = [attempt(tuple(sorted((*best.keep_float, g)))) for g in left]
        best = max(step, key=lambda t: (t.agreement, -sum(len(groups[g]) for g in t.keep_float)))
    return best, trials


def search_record(best: Trial, trials: list[Trial], min_agreement: float, crops: int) -> dict:
    """What the metadata's int8 recipe says of a search: target, result, whether met, every recipe tried."""
    return {"min_agreement": min_agreement, "top1_agreement": best.agreement, "met": best.agreement >= min_agreement,
            "agreement_crops": crops, "measured_against": "the fp32 export, ONNX Runtime CPU, calibration crops",
            "tried": [t.summary() for t in trials]}
