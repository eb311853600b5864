"""Omniglot in its standard layout: `<set>/<Alphabet>/<character>/<drawing>.png`.

A set is a zip (`images_background.zip`, `images_evaluation.zip`, the "minimal"
`images_background_small1.zip` / `_small2.zip`) or the same tree extracted, found in
DIR, DIR/omniglot or DIR/omniglot-py. Drawings are resized to 31x31 and stored as
ink in [0, 1] (1 = stroke). Characters are keyed `Alphabet/character`; a character
present in two sets (the small sets share Greek and Latin) is kept once.

The official one-shot runs (`all_runs.zip`, 20 runs of 20-way classification drawn
from the evaluation alphabets) load with `load_omniglot_runs`.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plasticity.data.common import DataError, cache_key, cached_arrays, find_dir, resolve_data_dir

SETS = ("images_background", "images_evaluation", "images_background_small1", "images_background_small2")
"""Set names, full sets first: `load_omniglot` uses every set it finds unless told which."""
IMAGE_SIZE = 31
FIX = "run `plasticity data download omniglot --data-dir DIR` (or point --data-dir at the Omniglot zips)"


@dataclass
class OmniglotSet:
    images: np.ndarray
    """`[C, D, 31, 31]` float32 ink in [0, 1]: C characters, D drawings each."""
    names: list[str]
    """`Alphabet/character` for each of the C characters (sorted)."""
    sets: list[str]
    """The set (zip) each character came from."""

    def __len__(self) -> int:
        return len(self.names)

    def alphabets(self) -> list[str]:
        return sorted({n.split("/")[0] for n in self.names})


@dataclass
class OmniglotRuns:
    support: np.ndarray
    """`[R, 20, 31, 31]`: the 20 training images (one per class) of each run."""
    queries: np.ndarray
    """`[R, 20, 31, 31]`: the 20 test items of each run."""
    answers: np.ndarray
    """`[R, 20]` int: the support index of each test item's class."""


def omniglot_dir(data_dir) -> Path:
    root = resolve_data_dir(data_dir)
    found = find_dir(root, ("omniglot", "omniglot-py"), lambda d: any(_set_source(d, s) for s in SETS))
    if found is None:
        raise DataError(f"no Omniglot sets ({', '.join(s + '.zip' for s in SETS)}) in {root} "
                        f"or its omniglot/ folder: {FIX}")
    return found


def _set_source(d: Path, name: str) -> Path | None:
    for p in (d / f"{name}.zip", d / name):
        if p.exists():
            return p
    return None


def to_ink(png: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """PNG bytes (white background, black strokes) -> float32 `[size, size]` ink in [0, 1]."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        im = im.convert("L").resize((size, size), Image.Resampling.LANCZOS)
        return 1.0 - np.asarray(im, dtype=np.float32) / 255.0


def _members(source: Path) -> Iterator[tuple[str, bytes]]:
    """(relative path inside the set, png bytes) for every drawing of a zip or folder."""
    if source.is_dir():
        for p in sorted(source.rglob("*.png")):
            yield p.relative_to(source).as_posix(), p.read_bytes()
        return
    try:
        with zipfile.ZipFile(source) as z:
            for info in sorted(z.infolist(), key=lambda i: i.filename):
                top, _, rel = info.filename.partition("/")
                # Drop the zip's top folder (`images_background/`); files beside it are not drawings.
                if rel.endswith(".png"):
                    yield rel, z.read(info)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, OSError) as e:
        raise DataError(f"Omniglot file {source} is truncated or corrupt ({e}): delete it and {FIX}") from None


def _read_set(source: Path) -> dict[str, list[np.ndarray]]:
    chars: dict[str, list[np.ndarray]] = {}
    for rel, png in _members(source):
        parts = rel.split("/")
        if len(parts) != 3:
            continue
        try:
            ink = to_ink(png)
        except Exception as e:  # PIL raises many types for damaged images
            raise DataError(f"Omniglot image {rel} in {source} cannot be decoded ({type(e).__name__}): "
                            f"delete {source.name} and {FIX}") from None
        chars.setdefault(f"{parts[0]}/{parts[1]}", []).append(ink)
    if not chars:
        raise DataError(f"Omniglot set {source} holds no <Alphabet>/<character>/*.png drawings: {FIX}")
    return chars


def load_omniglot(data_dir=None, sets: tuple[str, ...] | None = None) -> OmniglotSet:
    """Every character of the named sets (default: all sets present), converted once and cached."""
    d = omniglot_dir(data_dir)
    wanted = sets or tuple(s for s in SETS if _set_source(d, s))
    sources = []
    for s in wanted:
        if s not in SETS:
            raise DataError(f"unknown Omniglot set {s!r}: choose from {', '.join(SETS)}")
        src = _set_source(d, s)
        if src is None:
            raise DataError(f"Omniglot set {s} (.zip or folder) is missing in {d}: {FIX}")
        sources.append((s, src))

    def build() -> dict[str, np.ndarray]:
        chars: dict[str, list[np.ndarray]] = {}
        origin: dict[str, str] = {}
        for s, src in sources:
            for name, drawings in _read_set(src).items():
                if name not in chars:
                    chars[name], origin[name] = drawings, s
        names = sorted(chars)
        depth = min(len(chars[n]) for n in names)
        images = np.stack([np.stack(chars[n][:depth]) for n in names]).astype(np.float32)
        return {"images": images, "names": np.array(names), "sets": np.array([origin[n] for n in names])}

    files = [src for _, src in sources]
    stamp = [f for src in files for f in ([src] if src.is_file() else sorted(src.rglob("*.png"))[:1] + [src])]
    arrays = cached_arrays(cache_key("omniglot", stamp, sets=",".join(s for s, _ in sources)), build)
    return OmniglotSet(arrays["images"], [str(n) for n in arrays["names"]], [str(s) for s in arrays["sets"]])


def load_omniglot_runs(data_dir=None) -> OmniglotRuns:
    """The 20 official one-shot runs of Lake et al. (`all_runs.zip` or its folder)."""
    d = resolve_data_dir(data_dir)
    root = find_dir(d, ("omniglot", "omniglot-py"),
                    lambda p: (p / "all_runs.zip").exists() or (p / "all_runs").is_dir())
    if root is None:
        raise DataError(f"Omniglot one-shot runs (all_runs.zip) not found in {d} or its omniglot/ folder: {FIX}")
    source = root / "all_runs.zip" if (root / "all_runs.zip").exists() else root / "all_runs"
    files: dict[str, bytes] = {}
    if source.is_dir():
        files = {p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    else:
        try:
            with zipfile.ZipFile(source) as z:
                files = {i.filename: z.read(i) for i in z.infolist() if not i.is_dir()}
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise DataError(f"Omniglot file {source} is truncated or corrupt ({e}): delete it and {FIX}") from None
    runs = sorted({name.split("/")[0] for name in files if name.endswith("class_labels.txt")})
    if not runs:
        raise DataError(f"{source} holds no runNN/class_labels.txt: delete it and {FIX}")
    support, queries, answers = [], [], []
    for run in runs:
        pairs = [line.split() for line in files[f"{run}/class_labels.txt"].decode().splitlines() if line.strip()]
        train_names = sorted({t for _, t in pairs})
        try:
            support.append(np.stack([to_ink(files[t]) for t in train_names]))
            queries.append(np.stack([to_ink(files[q]) for q, _ in pairs]))
        except KeyError as e:
            raise DataError(f"{source}: {run}/class_labels.txt names {e.args[0]}, which is missing: "
                            f"delete it and {FIX}") from None
        answers.append([train_names.index(t) for _, t in pairs])
    return OmniglotRuns(np.stack(support), np.stack(queries), np.array(answers))
