"""CIFAR-100 with MobileNet, end to end: download an archive in the official format from the
loopback server, unpack the fine labels, fine-tune MobileNetV2 from the real ImageNet file."""

from __future__ import annotations

import json

from cifar_fixtures import build_cifar100
from fit_fixtures import column, invoke


def test_prepare_then_fit_mobilenet_v2_on_100_fine_classes(tmp_path, http_server, mobilenet_v2_035):
    archive = build_cifar100(tmp_path / "cifar-100-python.tar.gz", train_per_class=3, test_per_class=1,
                             num_fine=100)
    url = http_server.publish(archive.path)
    result = invoke(["prepare-cifar", "--dataset", "cifar100", "--source", url, "--md5", archive.md5,
                     "--root", str(tmp_path / "data"), "--validation-size", "1", "--workers", "1"])
    assert result.exit_code == 0, result.output
    data = tmp_path / "data" / "cifar100"
    assert (data / "labels.txt").read_text().split() == archive.label_names
    counts = json.loads((data / "manifest.json").read_text())["counts"]
    assert [sum(counts[s].values()) for s in ("train", "validation", "test")] == [200, 100, 100]

    result = invoke(["fit", "--data", str(data), "--runs-dir", str(tmp_path / "runs"), "--name", "c100",
                     "--backbone", "mobilenet_v2", "--alpha", "0.35",
                     "--weights", str(mobilenet_v2_035), "--image-size", "32",
                     "--freeze", "block_16_project_BN", "--epochs", "1", "--fine-tune-epochs", "1",
                     "--batch-size", "50"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "c100"
    assert json.loads((run / "run.json").read_text())["num_classes"] == 100
    assert (run / "labels.txt").read_text().split() == archive.label_names
    top5, top1 = column(run, "val_top5_accuracy"), column(run, "val_accuracy")
    assert len(top5) == 2 and (top5 >= top1).all()
