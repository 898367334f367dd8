"""A pretrained torchvision classifier as the soft-label teacher: loaded from a local state-dict file (a model
trained here and saved in torchvision format: no hub weights exist on this machine), refused with one line when the
file is missing or does not fit, saved as a teacher folder that rebuilds to the same network, and relabelling each
augmented batch online."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from benchmarks.imagenet_like import generate
from ddcore.data import IngestConfig, ingest, open_artifact
from ddcore.errors import WeightsError
from ddcore.evaluate.loss import Targets
from ddcore.evaluate.pretrained import InputAdapter, PretrainedSpec, build_pretrained
from ddcore.evaluate.teacher import TeacherConfig, TeacherError, load_teacher
from ddcore.threads import torch_threads
from tasks.ingest import INGEST
from tasks.runtime.refs import RefRecord
from tasks.runtime.store import ArtifactStore
from tasks.teacher import TRAIN_TEACHER


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pre")
    generate(root / "g", classes=4, per_class=12, val_per_class=4, size=32, formats=("folder",))
    ingest(IngestConfig.from_mapping({"source": {"kind": "image_folder", "root": str(root / "g")}}), root / "art")
    return root


@pytest.fixture(scope="module")
def weights(data: Path) -> Path:
    """A resnet18 with 4 outputs, trained briefly on the train split at 64 px ImageNet-normalised input (as a
    pretrained model would have been), saved as torchvision saves state dicts."""
    art = open_artifact(data / "art")
    x, y = art.load_split("train")
    spec = PretrainedSpec(architecture="resnet18", weights="unused", input_size=64)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4)
    net = InputAdapter(model, data_mean=tuple(art.meta.mean), data_std=tuple(art.meta.std), spec=spec)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch_threads(1):
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    path = data / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path


def test_the_teacher_stage_loads_tests_and_saves_a_pretrained_teacher(data: Path, weights: Path) -> None:
    """The stage trains nothing, records the test accuracy, and its folder rebuilds to the network the weights
    file gives (same logits on the test images)."""
    spec = PretrainedSpec(architecture="resnet18", weights=str(weights), input_size=64)
    store = ArtifactStore(data / "store")
    ds = INGEST.run(store, IngestConfig.from_mapping({"source": {"kind": "artifact", "path": str(data / "art")}}))
    ref = TRAIN_TEACHER.run(store, TeacherConfig(pretrained=spec), {"dataset": ds}, device="cpu")
    rec = RefRecord.from_json((Path(ref.uri) / "ref.json").read_text())
    assert rec.metrics["num_train"] == 0 and 0.0 <= rec.metrics["test_acc"] <= 1.0
    art = open_artifact(data / "art")
    x, _ = art.load_split("val")  # the ImageFolder's val/ is its held-out split
    teacher = load_teacher(ref.uri, num_classes=4, image_shape=(3, 32, 32))
    direct = InputAdapter(build_pretrained(spec, 4), data_mean=tuple(art.meta.mean), data_std=tuple(art.meta.std),
                          spec=spec)
    with torch.no_grad(), torch_threads(1):
        assert torch.allclose(teacher(x), direct(x), atol=1e-5)
    with pytest.raises(TeacherError, match="has 4 classes but the data has 10"):
        load_teacher(ref.uri, num_classes=10)


def test_bad_weights_are_refused_with_one_line(data: Path, weights: Path) -> None:
    """A missing file, a state dict of another architecture, another class count, an unknown architecture and a
    file that is no state dict each raise one WeightsError line naming the problem."""
    torch.save(torchvision.models.resnet34(num_classes=4).state_dict(), data / "r34.pth")
    torch.save(torchvision.models.resnet18(num_classes=7).state_dict(), data / "r18k7.pth")
    torch.save([1, 2, 3], data / "list.pth")
    cases = [("resnet18", data / "nope.pth", "not found"), ("resnet18", data / "r34.pth", "do not fit resnet18"),
             ("resnet18", data / "r18k7.pth", "teacher's classes must be the dataset's"),
             ("resnet_9000", weights, "unknown torchvision architecture"),
             ("resnet18", data / "list.pth", "no state dict")]
    for arch, path, message in cases:
        with pytest.raises(WeightsError, match=message) as err:
            build_pretrained(PretrainedSpec(architecture=arch, weights=str(path)), 4)
        assert "\n" not in str(err.value)


def test_each_augmented_batch_is_relabelled_by_the_teacher(data: Path, weights: Path) -> None:
    """With a pretrained teacher, a batch's target is softmax(teacher(x_augmented) / T): the loss of a student
    that outputs the teacher's own logits is zero, and changes when the augmented batch changes."""
    art = open_artifact(data / "art")
    x, y = art.load_split("train")
    spec = PretrainedSpec(architecture="resnet18", weights=str(weights), input_size=64)
    teacher = InputAdapter(build_pretrained(spec, 4), data_mean=tuple(art.meta.mean), data_std=tuple(art.meta.std),
                           spec=spec)
    targets = Targets.prepare(y, weights=None, soft_labels=None, teacher=teacher, temperature=4.0, device="cpu")
    idx = torch.arange(8)
    with torch.no_grad(), torch_threads(1):
        same = targets.per_image_loss(teacher(x[idx]), x[idx], idx, None)
        flipped = targets.per_image_loss(teacher(x[idx]), x[idx].flip(-1), idx, None)
    assert same.abs().max() < 1e-5 and flipped.abs().max() > 1e-4
