"""``otcl study --dataset cifar10`` on a tiny file set written in the CIFAR-10 pickle format."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from otcl.cli import main  # noqa: E402
from otcl.experiments.cifar import (  # noqa: E402
    POSTER_CIFAR10,
    ResNet18,
    load_cifar10,
    simclr_views,
)


def _write_cifar(root: Path, per_batch: int = 8, n_test: int = 10) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in [(f"data_batch_{k}", per_batch) for k in range(1, 6)] + [("test_batch",
                                                                           n_test)]:
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": [int(v) for v in rng.integers(0, 10, n)],
             b"batch_label": name.encode()}
        with open(root / name, "wb") as f:
            pickle.dump(d, f)


def test_loader_reads_channel_major_images(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    x_tr, y_tr, x_te, _ = load_cifar10(tmp_path)
    assert x_tr.shape == (40, 3, 32, 32) and x_te.shape == (10, 3, 32, 32)
    with open(tmp_path / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    # image 0 of batch 2, red channel, row 1, column 2 sits at index 0 * 1024 + 1 * 32 + 2
    assert x_tr[8, 0, 1, 2] == raw[b"data"][0, 34]
    assert x_tr[8, 2, 31, 31] == raw[b"data"][0, 3071]
    assert y_tr[8] == raw[b"labels"][0]
    (tmp_path / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_cifar10(tmp_path)


def test_resnet18_cifar_variant() -> None:
    net = ResNet18()
    first = net.backbone[0]
    assert first.kernel_size == (3, 3) and first.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 17  # conv1 + 8 blocks x 2
    n_params = sum(p.numel() for p in net.backbone.parameters())
    assert 11.0e6 < n_params < 11.3e6  # ResNet-18 without its classifier: about 11.17 M
    h = net.backbone(torch.zeros(2, 3, 32, 32))
    assert h.shape == (2, 512)


def test_views_stay_in_range_and_differ() -> None:
    x = torch.rand(6, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    a, b = simclr_views(x, gen), simclr_views(x, gen)
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.equal(a, b)


@pytest.mark.slow
def test_study_on_a_tiny_cifar_file_set(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "cifar-10-batches-py"
    _write_cifar(data)
    out = tmp_path / "out"
    status = main(["study", "--tiny", "--dataset", "cifar10", "--data-dir", str(tmp_path),
                   "--sections", "contrastive", "--out", str(out), "--no-progress",
                   "--jobs", "1"])
    assert status == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    c = res["cifar10"]
    assert c["n_train"] == 40 and c["n_test"] == 10
    for name, rec in c["losses"].items():
        assert 0.0 <= rec["probe_accuracy"] <= 1.0
        assert f"{POSTER_CIFAR10['standard'][name]:6.2f}" in printed
    assert sorted(res["datasets"]["cifar10"]["probe_accuracy"]) == sorted(c["losses"])
    report = (out / "report.md").read_text()
    assert "## CIFAR-10" in report and "92.61" in report


def test_cifar_needs_a_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["study", "--dataset", "cifar10", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "--data-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["study", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--out",
              str(tmp_path / "o")])
    assert exc.value.code == 2 and "data_batch_1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["study", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert not (tmp_path / "o").exists()
