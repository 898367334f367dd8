"""Evaluation of distilled sets: recipes (DM and NCFM protocols), training, DD-Ranking metrics."""

from ddcore.evaluate.metrics import (
    PairedScores,
    accs_by_seed,
    ars,
    by_seed,
    check_fraction,
    hlr,
    ior,
    lrs,
    paired_scores,
    stored_ipc,
    summarize,
)
from ddcore.evaluate.protocol import BEST_LABEL, EvalConfig
from ddcore.evaluate.suite import (
    BaselineComparison,
    EvalSummary,
    evaluate_random,
    evaluate_set,
    evaluate_with_baseline,
    random_subset,
)
from ddcore.evaluate.teacher import TeacherConfig, TeacherError, load_teacher, save_teacher, train_teacher
from ddcore.evaluate.train import EvalRun, top1_accuracy, train_and_evaluate, train_network

__all__ = [
    "BEST_LABEL",
    "BaselineComparison",
    "EvalConfig",
    "EvalRun",
    "EvalSummary",
    "PairedScores",
    "TeacherConfig",
    "TeacherError",
    "accs_by_seed",
    "ars",
    "by_seed",
    "check_fraction",
    "evaluate_random",
    "evaluate_set",
    "evaluate_with_baseline",
    "hlr",
    "ior",
    "load_teacher",
    "lrs",
    "paired_scores",
    "random_subset",
    "save_teacher",
    "stored_ipc",
    "summarize",
    "top1_accuracy",
    "train_and_evaluate",
    "train_network",
    "train_teacher",
]
