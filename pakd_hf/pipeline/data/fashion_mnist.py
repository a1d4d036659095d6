"""Fashion-MNIST (Zalando, 28x28 grayscale, 10 classes), from the Debian package.

``apt-get install -y dataset-fashion-mnist`` puts the original IDX files (gzip) in
``/usr/share/datasets/fashion-mnist/``. The official split is kept: the 10,000 ``t10k`` images
are the test set; ``validation_size`` images (a seeded random choice) are held out of the
60,000 training images for validation, the rest stay in training, in file order.

Column ``image`` holds PIL images in mode "L" (1 channel), ``label`` a ClassLabel with the 10
class names. A ViT student should still take 3 channels: ``pipeline("image-classification")``
converts every image to RGB before its processor runs, so a 1-channel model fails there. Use
``ViTImageProcessor(do_convert_rgb=True, image_mean=[0.5] * 3, image_std=[0.5] * 3, ...)``
with ``ViTConfig(num_channels=3)``: the processor replicates the gray channel for these "L"
images in training and evaluation, and the same saved processor serves the pipeline.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from . import MissingAssetError

INSTALL = "apt-get install -y dataset-fashion-mnist"
FOLDER = Path("/usr/share/datasets/fashion-mnist")
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (optionally gzip): magic 0x00 0x00 <type> <ndim>, ndim big-endian uint32
    dims, then the data. Only unsigned bytes (type 0x08) are used by (Fashion-)MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    kind, ndim = data[2], data[3]
    if kind != 0x08:
        raise ValueError(f"{path}: IDX data type 0x{kind:02x} is not supported (only unsigned bytes, 0x08)")
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise ValueError(f"{path}: {len(data) - offset} data bytes, expected {count} for shape {dims}")
    return np.frombuffer(data, dtype=np.uint8, count=count, offset=offset).reshape(dims)


def read_split(split: str, folder: str | os.PathLike = FOLDER) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels uint8 [n]) of the official ``train`` or ``test`` split."""
    folder = Path(folder)
    paths = [folder / name for name in FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise MissingAssetError(f"Fashion-MNIST files missing in {folder} ({', '.join(missing)}): {INSTALL}")
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{folder}: images {images.shape} and labels {labels.shape} do not match")
    return images, labels


def split_indices(n: int, validation_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices into the official training set: a seeded random
    validation slice; training keeps the rest in file order."""
    if not 0 < validation_size < n:
        raise ValueError(f"validation_size must be in (0, {n}), got {validation_size}")
    validation = np.random.default_rng(seed).permutation(n)[:validation_size]
    keep = np.ones(n, dtype=bool)
    keep[validation] = False
    return np.flatnonzero(keep), validation


def pgm(image: np.ndarray) -> bytes:
    """A uint8 [h, w] array as a binary PGM file (netpbm P5), which PIL opens in mode "L"."""
    height, width = image.shape
    return b"P5\n%d %d\n255\n" % (width, height) + np.ascontiguousarray(image, dtype=np.uint8).tobytes()


def load_fashion_mnist(seed: int = 0, validation_size: int = 5000, folder: str | os.PathLike = FOLDER):
    """DatasetDict(train 55,000, validation 5,000, test 10,000): image (PIL "L"), label."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

    train_images, train_labels = read_split("train", folder)
    test_images, test_labels = read_split("test", folder)
    train_idx, validation_idx = split_indices(len(train_images), validation_size, seed)
    features = Features({"image": Image(), "label": ClassLabel(names=LABELS)})

    def build(images: np.ndarray, labels: np.ndarray):
        # The Image feature stores encoded bytes, decoded by PIL on access. Binary PGM (a 15-byte
        # header + the raw pixels) needs no encoder: 70,000 images in well under a second, where
        # PNG-encoding them (what datasets does with numpy arrays) takes ~8 s on 2 cores.
        encoded = [{"bytes": pgm(image), "path": None} for image in images]
        return Dataset.from_dict({"image": encoded, "label": labels.astype(np.int64)}, features=features)

    return DatasetDict(
        {
            "train": build(train_images[train_idx], train_labels[train_idx]),
            "validation": build(train_images[validation_idx], train_labels[validation_idx]),
            "test": build(test_images, test_labels),
        }
    )
