"""Every on-disk dataset reader through one base class: fake files in the real format (`inject_fake_data`), then the
same checks for each — sizes, labels, batches equal to the whole, and one line naming a broken file."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from robustlab.data import load_dataset
from robustlab.errors import RobustlabError
from tests.helpers import write_cifar, write_idx, write_imagenet


class ReaderTest:
    """Subclasses name the dataset and write its files; `break_a_file` damages one and returns its name."""
    dataset: str
    image_size: tuple[int, int]
    num_classes = 10

    def inject_fake_data(self, root: Path) -> tuple[Path, int]:
        """Write tiny files in the real format under root; return the --data-dir and the number of test images."""
        raise NotImplementedError

    def break_a_file(self, data_dir: Path) -> str:
        raise NotImplementedError

    def test_reads_the_fake_files(self, tmp_path):
        data_dir, n = self.inject_fake_data(tmp_path)
        data = load_dataset(self.dataset, data_dir)
        assert len(data) == n
        assert data.image_size == self.image_size
        assert data.num_classes == self.num_classes
        labels = data.label_array()
        assert labels.dtype == np.int64
        assert labels.min() >= 0
        assert labels.max() < self.num_classes
        batches = list(data.batches(5))
        images = torch.cat([b[0] for b in batches])
        assert images.dtype == torch.uint8
        assert images.shape == (n, 3, *self.image_size)
        assert torch.equal(torch.cat([b[1] for b in batches]), torch.from_numpy(labels))
        assert torch.equal(torch.cat([b[0] for b in data.batches(n)]), images), "batch size changes nothing"

    def test_a_broken_file_is_one_line_naming_it(self, tmp_path):
        data_dir, _ = self.inject_fake_data(tmp_path)
        name = self.break_a_file(data_dir)
        with pytest.raises(RobustlabError) as e:
            data = load_dataset(self.dataset, data_dir)
            list(data.batches(4))
        assert name in str(e.value)
        assert "\n" not in str(e.value)


class TestCifar10(ReaderTest):
    dataset, image_size = "cifar10", (32, 32)

    def inject_fake_data(self, root):
        return write_cifar(root, n_test=13), 13

    def break_a_file(self, data_dir):
        (data_dir / "test_batch").write_bytes(b"not a pickle")
        return "test_batch"


class TestCifar100(TestCifar10):
    dataset, num_classes = "cifar100", 100

    def inject_fake_data(self, root):
        return write_cifar(root, classes=100, n_test=11), 11

    def break_a_file(self, data_dir):
        (data_dir / "test").write_bytes(b"not a pickle")
        return "test"


class TestImageNet(ReaderTest):
    dataset, image_size, num_classes = "imagenet", (224, 224), 1000

    def inject_fake_data(self, root):
        return write_imagenet(root / "val", classes=2, per_class=3), 6

    def test_reads_the_fake_files(self, tmp_path):
        data_dir, n = self.inject_fake_data(tmp_path)
        data = load_dataset(self.dataset, data_dir)
        assert len(data) == n
        assert data.image_size == self.image_size  # class folders: labels by sorted wnid

    def break_a_file(self, data_dir):
        bad = sorted(data_dir.rglob("*.JPEG"))[0]
        bad.write_bytes(b"not a jpeg")
        return bad.name


class TestFashionMnist(ReaderTest):
    dataset, image_size = "fashion-mnist", (32, 32)

    def inject_fake_data(self, root):
        return write_idx(root / "FashionMNIST" / "raw", n=9).parents[1], 9  # torchvision's layout

    def break_a_file(self, data_dir):
        path = data_dir / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw[:-3]))  # fewer labels than the header says
        return path.name


class TestMnist(TestFashionMnist):
    dataset = "mnist"

    def inject_fake_data(self, root):
        return write_idx(root, n=7, gz=False), 7  # Debian's layout, uncompressed

    def break_a_file(self, data_dir):
        path = data_dir / "t10k-images-idx3-ubyte"
        path.write_bytes(b"\x00\x00\x08\x01" + path.read_bytes()[4:])  # a label file's magic number
        return path.name


def test_idx_images_are_padded_and_grey_replicated(tmp_path):
    root = write_idx(tmp_path, n=3)
    raw = np.frombuffer(gzip.decompress((root / "t10k-images-idx3-ubyte.gz").read_bytes())[16:], np.uint8)
    data = load_dataset("mnist", root)
    first = data.images[0]
    assert first.shape == (32, 32, 3)
    assert (first[:2] == 0).all()
    assert (first[:, -2:] == 0).all()
    assert np.array_equal(first[2:30, 2:30, 0], raw[:784].reshape(28, 28))
    assert np.array_equal(first[..., 0], first[..., 2])


def test_fashion_mnist_without_data_dir_is_the_built_in_subset():
    data = load_dataset("fashion-mnist")
    assert (len(data), data.split) == (2000, "test-subset")
    assert "built-in subset" in data.notice
    assert np.bincount(data.label_array()).tolist() == [200] * 10
    with pytest.raises(RobustlabError, match="pass --data-dir"):
        load_dataset("mnist")


def test_a_decompression_bomb_is_one_line_naming_the_file(tmp_path, monkeypatch):
    from PIL import Image
    root = write_imagenet(tmp_path / "val", classes=1, per_class=2)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # any of the fake JPEGs is then a "bomb" (> 2x that)
    data = load_dataset("imagenet", root)
    with pytest.raises(RobustlabError) as e:
        list(data.batches(2))
    assert "cannot decode" in str(e.value)
    assert ".JPEG" in str(e.value)
    assert "\n" not in str(e.value)
