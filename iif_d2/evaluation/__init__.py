"""detectron2 evaluators: lvis-api's LVIS metrics in bounded memory (plus AP-fixed and AP-pool),
and the evaluator a config asks for."""

from iif_d2.evaluation.build import build_evaluator
from iif_d2.evaluation.lvis_evaluator import LVIS_EVAL_ENGINES, FastLVISEvaluator, LVISEvaluator
from iif_d2.evaluation.score_floor import ScoreFloorFilter, score_floors_attached, uses_score_floor

__all__ = [
    "FastLVISEvaluator",
    "LVIS_EVAL_ENGINES",
    "LVISEvaluator",
    "ScoreFloorFilter",
    "build_evaluator",
    "score_floors_attached",
    "uses_score_floor",
]
