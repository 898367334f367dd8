"""Stage ``train_teacher``: the soft-label teacher, trained on the dataset's real train split.

Input ``{"dataset": ref}``; config :class:`ddcore.evaluate.teacher.TeacherConfig`. The network is trained
on the ``train`` split, tested on the test split (``test``, else ``val``) and written into the stage's
output folder by :func:`ddcore.evaluate.teacher.save_teacher` (``teacher.json`` + weights); the stage
machinery publishes that folder atomically. Consumers load it with
``ddcore.evaluate.teacher.load_teacher(ref.uri, ctx.device, num_classes=..., image_shape=...)``.
"""

from __future__ import annotations

import time

from ddcore.data import open_artifact
from ddcore.data.artifact import DatasetArtifact
from ddcore.evaluate.pretrained import InputAdapter, build_pretrained
from ddcore.evaluate.teacher import TeacherConfig, save_teacher, train_teacher
from ddcore.evaluate.test_data import load_test_split
from ddcore.evaluate.train import EpochCheckpoint, top1_accuracy
from tasks.evaluate import test_split
from tasks.runtime.refs import ArtifactKind, ArtifactRef
from tasks.runtime.stage import StageContext, make_stage_task

TEACHER_STAGE = "train_teacher"
TEACHER_KIND: ArtifactKind = "teacher"


def teacher_stage(inputs: dict[str, ArtifactRef], config: TeacherConfig, out: str, ctx: StageContext) -> dict:
    """Train the teacher on ``inputs["dataset"]`` (or load the pretrained one the config names), test it, and save
    it into ``out``; returns test accuracy and seconds."""
    t0 = time.perf_counter()
    data = open_artifact(inputs["dataset"].uri)
    split = test_split(data)
    if config.pretrained is not None:
        return _pretrained(data, split, config, out, ctx) | {"seconds": time.perf_counter() - t0}
    train_x, train_y = data.load_split("train")
    test_x, test_y = data.load_split(split)
    k = data.meta.num_classes

    def progress(ep: int, passes: int, loss: float) -> None:
        ctx.log_metrics(ep, {"teacher_train_loss": loss})
        ctx.progress(ep + 1, passes, "epochs", loss=loss)

    net, metrics = train_teacher((train_x, train_y), test_x, test_y, config=config, num_classes=k,
                                 device=ctx.device, progress=progress,
                                 checkpoint=EpochCheckpoint(ctx.checkpoint_dir, every=5))
    acc = float(metrics["test_acc"])
    ctx.log_metrics(config.epochs, {"teacher_test_acc": acc})
    ctx.logger.info("train_teacher: %s test accuracy %.4f on %s after %d epochs (%d train images)",
                    config.network, acc, split, config.epochs, int(metrics["num_train"]))
    c, h, w = (int(d) for d in train_x.shape[1:])
    save_teacher(net, config, out, num_classes=k, image_shape=(c, h, w), test_acc=acc, dataset_digest=data.digest)
    return {"test_acc": acc, "train_loss": float(metrics["train_loss"]), "num_train": int(metrics["num_train"]),
            "test_split": split, "seconds": time.perf_counter() - t0}


def _pretrained(data: DatasetArtifact, split: str, config: TeacherConfig, out: str, ctx: StageContext) -> dict:
    """Load the pretrained teacher (no training, no train split in memory), test it on ``split`` (streamed when
    over the evaluation memory budget) and save it as a teacher folder."""
    spec, k, norm = config.pretrained, data.meta.num_classes, (tuple(data.meta.mean), tuple(data.meta.std))
    assert spec is not None
    net = InputAdapter(build_pretrained(spec, k), data_mean=norm[0], data_std=norm[1], spec=spec).to(ctx.device)
    budget = config.to_eval_config()
    test_x, test_y = load_test_split(data, split, memory_mb=budget.test_memory_mb, workers=budget.loader_workers)
    acc = top1_accuracy(net, test_x, test_y, device=ctx.device, batch_size=256)
    ctx.log_metrics(0, {"teacher_test_acc": acc})
    ctx.logger.info("train_teacher: pretrained %s (%s) test accuracy %.4f on %s", spec.architecture, spec.weights,
                    acc, split)
    c, h, w = (int(d) for d in data.meta.image_shape)
    save_teacher(net, config, out, num_classes=k, image_shape=(c, h, w), test_acc=acc, dataset_digest=data.digest,
                 data_norm=norm)
    return {"test_acc": acc, "num_train": 0, "test_split": split, "pretrained": spec.architecture}


TRAIN_TEACHER = make_stage_task(TEACHER_STAGE, teacher_stage, TEACHER_KIND, retries=1, tags=("gpu",))
