"""`plasticity data download cifar10|omniglot`: fetch the official files, verify, resume.

Each file is downloaded to `<name>.part` next to its destination; an interrupted
download keeps the part and the next run continues it with an HTTP range request
(falling back to a fresh start if the server ignores ranges). The finished file is
checked against its published checksum before it replaces anything; a mismatch
deletes the part and says so. CIFAR-10's archive is then extracted (safely, with the
tar `data` filter) to `DIR/cifar-10-batches-py/`; Omniglot's zips go to `DIR/omniglot/`
as they are (the loader reads zips directly).

`mirror` fetches every file as `<mirror>/<filename>` instead, with the same checksums.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from plasticity.data.common import DataError, resolve_data_dir

OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python"


@dataclass(frozen=True)
class Resource:
    filename: str
    url: str
    """Official source."""
    subdir: str
    """Folder under the data directory the file (or its extraction) goes to."""
    md5: str | None = None
    sha256: str | None = None
    extract: bool = False
    """Extract the tar archive into the data directory after verifying it."""
    provides: tuple[str, ...] = ()
    """Files (relative to the data directory) whose presence means the extracted archive is there."""


SOURCES: dict[str, tuple[Resource, ...]] = {
    "cifar10": (
        # Checksum published on https://www.cs.toronto.edu/~kriz/cifar.html (also used by torchvision).
        Resource("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", ".",
                 md5="c58f30108f718f92721af3b95e74349a", extract=True,
                 provides=tuple(f"cifar-10-batches-py/{n}" for n in (*(f"data_batch_{i}" for i in range(1, 6)),
                                                                     "test_batch", "batches.meta"))),
    ),
    "omniglot": (
        # The full background / evaluation sets (checksums as in torchvision).
        Resource("images_background.zip", f"{OMNIGLOT_URL}/images_background.zip", "omniglot",
                 md5="68d2efa1b9178cc56df9314c21c6e718"),
        Resource("images_evaluation.zip", f"{OMNIGLOT_URL}/images_evaluation.zip", "omniglot",
                 md5="6b91aef0f799c5bb55b94e3f2daec811"),
        Resource("all_runs.zip", f"{OMNIGLOT_URL}/one-shot-classification/all_runs.zip", "omniglot",
                 sha256="437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325"),
    ),
    "omniglot-small": (
        # The official "minimal" background splits of brendenlake/omniglot.
        Resource("images_background_small1.zip", f"{OMNIGLOT_URL}/images_background_small1.zip", "omniglot",
                 sha256="f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"),
        Resource("images_background_small2.zip", f"{OMNIGLOT_URL}/images_background_small2.zip", "omniglot",
                 sha256="3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f"),
        Resource("all_runs.zip", f"{OMNIGLOT_URL}/one-shot-classification/all_runs.zip", "omniglot",
                 sha256="437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325"),
    ),
}
CHUNK = 1 << 16


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, res: Resource) -> str | None:
    """None if `path` matches the resource's checksum, else a description of the mismatch."""
    for algorithm, expected in (("sha256", res.sha256), ("md5", res.md5)):
        if expected:
            got = file_digest(path, algorithm)
            return None if got == expected else f"{algorithm} {got}, expected {expected}"
    return None


def fetch(url: str, dest: Path, res: Resource, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` through `dest.part`, resuming a previous part, and verify it."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "plasticity-downloader"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the part is already complete (or bigger): check it as it is
            return _finish(part, dest, res)
        raise DataError(f"download of {url} failed: HTTP {e.code} {e.reason}: check the URL or --mirror") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"cannot reach {url} ({reason}): check the network or pass --mirror URL") from None
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the range: start again
        total = response.headers.get("Content-Length")
        total = int(total) + offset if total else None
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name, disable=not progress)
        try:
            with open(part, "ab" if offset else "wb") as f:
                for block in iter(lambda: response.read(CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise DataError(f"download of {dest.name} interrupted ({e}); {part} is kept: run the same command "
                            "again to resume") from None
        finally:
            bar.close()
    if total is not None and part.stat().st_size < total:
        raise DataError(f"download of {dest.name} ended early ({part.stat().st_size} of {total} bytes); "
                        f"{part} is kept: run the same command again to resume")
    return _finish(part, dest, res)


def _finish(part: Path, dest: Path, res: Resource) -> Path:
    problem = verify(part, res)
    if problem is not None:
        part.unlink()
        raise DataError(f"checksum mismatch for {dest.name} ({problem}): the download was corrupt or the source "
                        "serves another file; it was deleted, run the command again")
    os.replace(part, dest)
    return dest


def extract_tar(archive: Path, into: Path) -> None:
    """Extract into a temporary folder beside `into`, then move the top folders in place."""
    with tempfile.TemporaryDirectory(dir=into) as tmp:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"{archive} cannot be extracted ({e}): delete it and run the command again") from None
        for top in Path(tmp).iterdir():
            target = into / top.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(top, target)


def download(dataset: str, data_dir=None, *, mirror: str | None = None, progress: bool = True,
             keep_archive: bool = False) -> list[Path]:
    """Fetch `dataset` (`cifar10`, `omniglot` or `omniglot-small`) into the data directory."""
    if dataset not in SOURCES:
        raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(SOURCES)}")
    root = resolve_data_dir(data_dir)
    done = []
    for res in SOURCES[dataset]:
        dest = root / res.subdir / res.filename
        url = f"{mirror.rstrip('/')}/{res.filename}" if mirror else res.url
        if res.provides and all((root / f).is_file() for f in res.provides):
            print(f"{root / res.provides[0]} and the rest of {res.filename} are already there")
            done.append(root / res.provides[0])
            continue
        if dest.is_file() and verify(dest, res) is None:
            print(f"{dest} is already there and verified")
        else:
            if dest.is_file():
                dest.unlink()  # a damaged earlier download
            fetch(url, dest, res, progress=progress)
        if res.extract:
            extract_tar(dest, dest.parent)
            if not keep_archive:
                dest.unlink()
        done.append(dest)
    return done
