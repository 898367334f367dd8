"""Evaluation of distilled sets: recipes (DM and NCFM protocols), training, DD-Ranking metrics."""

from ddcore.evaluate.metrics import ars, check_fraction, hlr, ior, lrs, summarize
from ddcore.evaluate.protocol import BEST_LABEL, EvalConfig
from ddcore.evaluate.suite import (
    BaselineComparison,
    EvalSummary,
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
    "TeacherConfig",
    "TeacherError",
    "ars",
    "check_fraction",
    "evaluate_set",
    "evaluate_with_baseline",
    "hlr",
    "ior",
    "load_teacher",
    "lrs",
    "random_subset",
    "save_teacher",
    "summarize",
    "top1_accuracy",
    "train_and_evaluate",
    "train_network",
    "train_teacher",
]
