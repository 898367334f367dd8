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
from ddcore.evaluate.teacher import TeacherConfig, save_teacher, train_teacher
from ddcore.evaluate.train import EpochCheckpoint
from tasks.evaluate import test_split
from tasks.runtime.refs import ArtifactKind, ArtifactRef
from tasks.runtime.stage import StageContext, make_stage_task

TEACHER_STAGE = "train_teacher"
TEACHER_KIND: ArtifactKind = "teacher"


def teacher_stage(inputs: dict[str, ArtifactRef], config: TeacherConfig, out: str, ctx: StageContext) -> dict:
    """Train the teacher on ``inputs["dataset"]`` and save it into ``out``; returns test accuracy and seconds."""
    t0 = time.perf_counter()
    data = open_artifact(inputs["dataset"].uri)
    split = test_split(data)
    train_x, train_y = data.load_split("train")
    test_x, test_y = data.load_split(split)
    k = data.meta.num_classes

    def progress(ep: int, passes: int, loss: float) -> None:
        ctx.log_metrics(ep, {"teacher_train_loss": loss})
        ctx.progress(ep + 1, passes, "epochs", loss=loss)

    net, metrics = train_teacher((train_x, train_y), test_x, test_y, config=config, num_classes=k,
                                 device=ctx.device, progress=progress,
                                 checkpoint=EpochCheckpoint(ctx.local_checkpoint_dir, every=5))
    acc = float(metrics["test_acc"])
    ctx.log_metrics(config.epochs, {"teacher_test_acc": acc})
    ctx.logger.info("train_teacher: %s test accuracy %.4f on %s after %d epochs (%d train images)",
                    config.network, acc, split, config.epochs, int(metrics["num_train"]))
    c, h, w = (int(d) for d in train_x.shape[1:])
    save_teacher(net, config, out, num_classes=k, image_shape=(c, h, w), test_acc=acc, dataset_digest=data.digest)
    return {"test_acc": acc, "train_loss": float(metrics["train_loss"]), "num_train": int(metrics["num_train"]),
            "test_split": split, "seconds": time.perf_counter() - t0}


TRAIN_TEACHER = make_stage_task(TEACHER_STAGE, teacher_stage, TEACHER_KIND, retries=1, tags=("gpu",))
