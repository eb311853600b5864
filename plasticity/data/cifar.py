"""CIFAR-10 in the standard python layout (`data_batch_1..5`, `test_batch`), as grayscale.

Looks for the batches in DIR, DIR/cifar-10-batches-py or DIR/cifar10. Each image is
converted as in the 2018 reference code: R + G + B, minus its mean, divided by its
largest absolute value, so pixels lie in [-1, 1]. Batches of any length are accepted
(the shared test data holds 1017 images per batch, not 10000).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plasticity.data.common import DataError, cache_key, cached_arrays, find_dir, resolve_data_dir

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
SPLITS = {
    # The reference trains on batches 1-4 and tests on batch 5; the official test batch is separate.
    "train": TRAIN_BATCHES[:4],
    "validation": TRAIN_BATCHES[4:],
    "test": TEST_BATCHES,
    "all-train": TRAIN_BATCHES,
}
FIX = "run `plasticity data download cifar10 --data-dir DIR` (or point --data-dir at the CIFAR-10 python batches)"


@dataclass
class CifarImages:
    images: np.ndarray
    """`[N, 32, 32]` float32 grayscale in [-1, 1]."""
    labels: np.ndarray
    """`[N]` int64 class labels 0..9."""

    def __len__(self) -> int:
        return len(self.labels)


def cifar_dir(data_dir) -> Path:
    root = resolve_data_dir(data_dir)
    found = find_dir(root, ("cifar-10-batches-py", "cifar10"),
                     lambda d: any((d / n).is_file() for n in (*TRAIN_BATCHES, *TEST_BATCHES)))
    if found is None:
        raise DataError(f"no CIFAR-10 batches (data_batch_1..5, test_batch) in {root} or its "
                        f"cifar-10-batches-py/ folder: {FIX}")
    return found


class _ForeignObject(pickle.UnpicklingError):
    pass


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch and nothing else: the only globals a batch refers to are
    numpy's array reconstruction (any pickle protocol, numpy 1 or 2 module names) and, in
    protocol 2 pickles written by Python 3, `_codecs.encode` for byte strings. Anything
    else is refused before it is called (a foreign pickle could otherwise run code)."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise _ForeignObject(f"it refers to {module}.{name}, which a CIFAR-10 batch never does")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 `[n, 3072]`, int64 `[n]`) from one pickled batch, with clear errors."""
    if not path.is_file():
        raise DataError(f"CIFAR-10 file {path} is missing: {FIX}")
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except _ForeignObject as e:
        raise DataError(f"CIFAR-10 file {path} is not a CIFAR-10 batch ({e}; refused without running it): "
                        f"replace it with a real batch: {FIX}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, AttributeError, IndexError,
            MemoryError, OverflowError) as e:
        raise DataError(f"CIFAR-10 file {path} is truncated or corrupt ({type(e).__name__}): delete it and "
                        f"{FIX}") from None
    # Python 2 wrote the keys as byte strings; a Python 3 writer may use str keys.
    keys = {k.decode("latin1") if isinstance(k, bytes) else k: k for k in batch} if isinstance(batch, dict) else {}
    if "data" not in keys or "labels" not in keys:
        found = ", ".join(sorted(map(str, keys))) or type(batch).__name__
        raise DataError(f"CIFAR-10 file {path} has no 'data' and 'labels' entries (it holds {found[:120]}): "
                        f"a batch is a dict with data (uint8 [n, 3072]) and labels; {FIX}")
    data, labels = batch[keys["data"]], batch[keys["labels"]]
    data, labels = np.asarray(data), np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"CIFAR-10 file {path} has data {data.dtype}{list(data.shape)} and {len(labels)} labels, "
                        f"expected uint8 [n, 3072] and n labels: delete it and {FIX}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"CIFAR-10 file {path} has labels outside 0..9: delete it and {FIX}")
    return data, labels


def to_grayscale(data: np.ndarray) -> np.ndarray:
    """uint8 `[n, 3072]` (R, G, B planes) -> float32 `[n, 32, 32]` in [-1, 1], per image."""
    rgb = data.reshape(-1, 3, 32, 32).astype(np.float32)
    gray = rgb.sum(1)
    gray -= gray.mean(axis=(1, 2), keepdims=True)
    scale = np.abs(gray).max(axis=(1, 2), keepdims=True)
    return gray / np.where(scale > 0, scale, 1.0)


def load_cifar10(data_dir=None, split: str = "train") -> CifarImages:
    """The grayscale images of `split` (`train` = batches 1-4, `validation` = batch 5,
    `test` = test_batch, `all-train` = batches 1-5), converted once and cached."""
    if split not in SPLITS:
        raise DataError(f"unknown CIFAR-10 split {split!r}: choose one of {', '.join(SPLITS)}")
    d = cifar_dir(data_dir)
    paths = [d / name for name in SPLITS[split]]
    for p in paths:
        if not p.is_file():
            raise DataError(f"CIFAR-10 file {p} is missing (needed for the {split} split): {FIX}")

    def build() -> dict[str, np.ndarray]:
        parts = [read_batch(p) for p in paths]
        data = np.concatenate([x for x, _ in parts])
        return {"images": to_grayscale(data),
                "labels": np.concatenate([y for _, y in parts])}

    arrays = cached_arrays(cache_key("cifar10-gray", paths, split=split), build)
    return CifarImages(arrays["images"].astype(np.float32), arrays["labels"])
