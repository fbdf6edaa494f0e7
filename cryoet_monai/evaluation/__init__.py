"""Evaluation reports (metrics.json, Markdown table, PNG figures) and training-curve plots."""

from cryoet_monai.evaluation.curves import TrainingCurvesHandler, load_history
from cryoet_monai.evaluation.evaluator import (
    EvaluationError,
    TomogramEvaluator,
    confusion_of_volumes,
    load_test_list,
)
from cryoet_monai.evaluation.figures import (
    CLASS_COLORS,
    plot_class_scores,
    plot_confusion_matrix,
    plot_example_slices,
    plot_training_curves,
)
from cryoet_monai.evaluation.report import (
    CaseResult,
    class_scores,
    format_table,
    summarize,
    surface_dice,
    write_report,
)

__all__ = [
    "CLASS_COLORS",
    "CaseResult",
    "EvaluationError",
    "TomogramEvaluator",
    "TrainingCurvesHandler",
    "class_scores",
    "confusion_of_volumes",
    "format_table",
    "load_history",
    "load_test_list",
    "plot_class_scores",
    "plot_confusion_matrix",
    "plot_example_slices",
    "plot_training_curves",
    "summarize",
    "surface_dice",
    "write_report",
]
