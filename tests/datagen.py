"""Small data sets written in the real on-disk layouts, so that the loaders' tests run on
a fresh clone without the shared data (`PLASTICITY_TEST_DATA`).

    write_cifar(root)          root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    write_omniglot(root)       root/omniglot/{images_background_small1.zip, all_runs.zip}

The CIFAR batches are byte-for-byte the format of the official files by default: a
Python 2 pickle (protocol 2, byte strings as `SHORT_BINSTRING`/`BINSTRING`, numpy's
`_reconstruct`), a dict with `batch_label`, `labels` (list of ints), `data` (uint8
`[n, 3072]`, R, G, B planes) and `filenames`. `style=` writes the same content as a
Python 3 user would (`pickle.dump` with any protocol, bytes or str keys) instead.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _Py2Pickler(pickle._Pickler):
    """Writes `bytes` as Python 2 wrote `str` (`SHORT_BINSTRING`/`BINSTRING`), as in the
    official CIFAR-10 files; Python 3's protocol 2 would call `_codecs.encode` instead."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_bytes


def cifar_batch(n: int, seed: int, label: str) -> dict[bytes, object]:
    """One batch's content: `n` random images, labels cycling 0..9 from a seeded shift."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(x) for x in (np.arange(n) + seed) % 10]
    return {b"batch_label": label.encode(), b"labels": labels, b"data": data,
            b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)]}


def dump_batch(batch: dict, path: Path, style: str = "py2") -> None:
    """Write `batch` as `py2` (the official format), `py3-pN` (pickle protocol N, bytes
    keys) or `py3-str-pN` (protocol N, str keys and str strings)."""
    with open(path, "wb") as f:
        if style == "py2":
            _Py2Pickler(f, protocol=2).dump(batch)
            return
        protocol = int(style.rsplit("-p", 1)[1])
        if "-str-" in style:
            batch = {k.decode(): [x.decode() for x in v] if k == b"filenames" else
                     v.decode() if isinstance(v, bytes) else v for k, v in batch.items()}
        pickle.dump(batch, f, protocol=protocol)


def write_cifar(root: Path, per_batch: int = 30, style: str = "py2", subdir: str = "cifar-10-batches-py",
                files: tuple[str, ...] = CIFAR_FILES) -> Path:
    """Write the CIFAR-10 python layout under `root/subdir`; returns `root`."""
    d = Path(root) / subdir
    d.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(files):
        label = "testing batch 1 of 1" if name == "test_batch" else f"training batch {name[-1]} of 5"
        dump_batch(cifar_batch(per_batch, seed=CIFAR_FILES.index(name) if name in CIFAR_FILES else i, label=label),
                   d / name, style)
    with open(d / "batches.meta", "wb") as f:
        _Py2Pickler(f, protocol=2).dump({b"num_cases_per_batch": per_batch,
                                        b"label_names": [n.encode() for n in LABEL_NAMES], b"num_vis": 3072})
    return Path(root)


def drawing(rng: np.random.Generator, size: int = 105) -> bytes:
    """A PNG like Omniglot's: 105x105, 1-bit, black strokes on white."""
    from PIL import Image, ImageDraw

    im = Image.new("1", (size, size), 1)
    draw = ImageDraw.Draw(im)
    for _ in range(3):
        draw.line([tuple(int(v) for v in rng.integers(10, size - 10, 2)) for _ in range(3)], fill=0, width=4)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def write_omniglot(root: Path, alphabets: int = 3, characters: int = 8, drawings: int = 4, runs: int = 2,
                   set_name: str = "images_background_small1", seed: int = 0, as_tree: bool = False) -> Path:
    """Write an Omniglot set (`<set>.zip` holding `<set>/<Alphabet>/characterNN/<id>_NN.png`,
    or the extracted tree with `as_tree`) and `all_runs.zip` (`runNN/class_labels.txt`,
    `runNN/training/classNN.png`, `runNN/test/itemNN.png`; 20 classes per run) under
    `root/omniglot`; returns `root`."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "omniglot"
    d.mkdir(parents=True, exist_ok=True)
    members = {}
    for a in range(alphabets):
        for c in range(characters):
            for k in range(drawings):
                members[f"{set_name}/Alphabet_{a}/character{c + 1:02d}/{a * 100 + c:04d}_{k + 1:02d}.png"] = \
                    drawing(rng)
    if as_tree:
        for name, png in members.items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(png)
    else:
        with zipfile.ZipFile(d / f"{set_name}.zip", "w") as z:
            for name, png in members.items():
                z.writestr(name, png)
    with zipfile.ZipFile(d / "all_runs.zip", "w") as z:
        for r in range(1, runs + 1):
            order = rng.permutation(20)
            lines = []
            for i in range(20):
                z.writestr(f"run{r:02d}/training/class{i + 1:02d}.png", drawing(rng))
                z.writestr(f"run{r:02d}/test/item{i + 1:02d}.png", drawing(rng))
                lines.append(f"run{r:02d}/test/item{i + 1:02d}.png run{r:02d}/training/class{order[i] + 1:02d}.png")
            z.writestr(f"run{r:02d}/class_labels.txt", "\n".join(lines) + "\n")
    return Path(root)
