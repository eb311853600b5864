"""Data loaders on the shared CIFAR-10 / Omniglot files, their errors, the cache, and
`plasticity data download` against a real local HTTP mirror."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile

import numpy as np
import pytest

from plasticity.cli import main
from plasticity.data import DataError, load_cifar10, load_omniglot, load_omniglot_runs
from plasticity.data import cifar as cifar_module
from plasticity.data.download import SOURCES, Resource, download, fetch
from tests.conftest import SHARED_DATA
from tests.servers import FileServer

CIFAR = SHARED_DATA / "cifar10"
OMNIGLOT = SHARED_DATA / "omniglot"
# Per-class counts of the shared test batch (shared/data/README.md).
TEST_LABEL_COUNTS = [105, 93, 100, 104, 92, 87, 114, 102, 110, 110]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTICITY_CACHE", str(tmp_path / "cache"))
    assert CIFAR.is_dir() and OMNIGLOT.is_dir(), f"test data missing under {SHARED_DATA}: set PLASTICITY_TEST_DATA"


@pytest.mark.parametrize("split,count", [("train", 4 * 1017), ("validation", 1017), ("test", 1017),
                                         ("all-train", 5085)])
def test_cifar_splits_shapes_and_ranges(split, count):
    data = load_cifar10(SHARED_DATA, split)
    assert data.images.shape == (count, 32, 32) and data.images.dtype == np.float32
    assert data.labels.shape == (count,) and set(np.unique(data.labels)) == set(range(10))
    assert data.images.min() >= -1.0 and data.images.max() <= 1.0
    # Every image reaches +-1 exactly and has zero mean (the reference normalisation).
    assert np.allclose(np.abs(data.images).max(axis=(1, 2)), 1.0)
    assert np.abs(data.images.mean(axis=(1, 2))).max() < 1e-5
    if split == "test":
        assert np.bincount(data.labels).tolist() == TEST_LABEL_COUNTS
        assert data.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_cifar_grayscale_matches_the_reference_formula():
    with open(CIFAR / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"][:5].reshape(5, 3, 32, 32).astype(np.float64)
    gray = raw.sum(1)
    gray -= gray.mean(axis=(1, 2), keepdims=True)
    gray /= np.abs(gray).max(axis=(1, 2), keepdims=True)
    assert np.allclose(load_cifar10(SHARED_DATA, "test").images[:5], gray, atol=1e-6)


def test_cifar_is_converted_once_then_read_from_the_cache(monkeypatch, tmp_path):
    first = load_cifar10(SHARED_DATA, "validation")
    assert list((tmp_path / "cache").glob("cifar10-gray-*.npz"))

    def no_reading(path):
        raise AssertionError(f"{path} was read again although it is cached")

    monkeypatch.setattr(cifar_module, "read_batch", no_reading)
    again = load_cifar10(SHARED_DATA, "validation")
    assert np.array_equal(first.images, again.images) and np.array_equal(first.labels, again.labels)


def _cifar_copy(tmp_path, damage=None):
    d = tmp_path / "cifar-10-batches-py"
    shutil.copytree(CIFAR, d)
    if damage:
        damage(d)
    return tmp_path


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "data_batch_5").write_bytes((d / "data_batch_5").read_bytes()[:200_000]),
     "data_batch_5 is truncated or corrupt"),
    (lambda d: (d / "data_batch_5").write_bytes(b"not a pickle at all"), "data_batch_5 is truncated or corrupt"),
    (lambda d: (d / "data_batch_5").unlink(), "data_batch_5 is missing"),
    (lambda d: (d / "data_batch_5").write_bytes(pickle.dumps(_RunsCode(d / "pwned"))),
     r"data_batch_5 is not a CIFAR-10 batch \(it refers to posix.system"),
], ids=["truncated", "garbage", "missing", "foreign-pickle"])
def test_cifar_damaged_files_name_the_file_and_the_fix(tmp_path, damage, message):
    root = _cifar_copy(tmp_path, damage)
    with pytest.raises(DataError, match=message) as e:
        load_cifar10(root, "validation")
    assert "plasticity data download cifar10" in str(e.value) and "\n" not in str(e.value)
    assert not (root / "cifar-10-batches-py" / "pwned").exists()  # nothing in the file was run


class _RunsCode:
    """Unpickling this runs a shell command: what the batch reader must refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_missing_directory_error(tmp_path):
    with pytest.raises(DataError, match=r"no CIFAR-10 batches .* `plasticity data download cifar10"):
        load_cifar10(tmp_path, "train")


def test_omniglot_sets_characters_and_pixels():
    chars = load_omniglot(SHARED_DATA)
    # 136 + 156 characters, Greek and Latin (50) in both small sets: 242 distinct.
    assert chars.images.shape == (242, 20, 31, 31) and len(chars.names) == 242
    assert chars.alphabets() == ["Balinese", "Early_Aramaic", "Greek", "Japanese_(katakana)", "Korean", "Latin",
                                 "Sanskrit", "Tagalog"]
    assert chars.images.min() >= 0.0 and chars.images.max() <= 1.0
    # Strokes are ink (1) on an empty background (0): most pixels are background.
    assert 0.03 < chars.images.mean() < 0.2
    only_small1 = load_omniglot(SHARED_DATA, ("images_background_small1",))
    assert len(only_small1) == 136 and set(only_small1.sets) == {"images_background_small1"}


def test_omniglot_runs():
    runs = load_omniglot_runs(SHARED_DATA)
    assert runs.support.shape == runs.queries.shape == (20, 20, 31, 31)
    # Each run's 20 test items map onto its 20 training classes, one each.
    assert all(sorted(a) == list(range(20)) for a in runs.answers.tolist())


def test_omniglot_corrupt_zip_names_the_file(tmp_path):
    d = tmp_path / "omniglot"
    d.mkdir()
    (d / "images_background_small1.zip").write_bytes((OMNIGLOT / "images_background_small1.zip").read_bytes()[:5000])
    with pytest.raises(DataError, match="images_background_small1.zip is truncated or corrupt"):
        load_omniglot(tmp_path)


def test_omniglot_reads_an_extracted_tree(tmp_path):
    import zipfile

    with zipfile.ZipFile(OMNIGLOT / "images_background_small1.zip") as z:
        z.extractall(tmp_path)
    from_tree = load_omniglot(tmp_path)
    from_zip = load_omniglot(SHARED_DATA, ("images_background_small1",))
    assert from_tree.names == from_zip.names
    assert np.array_equal(from_tree.images, from_zip.images)


# --- download ---------------------------------------------------------------------------

@pytest.fixture
def mirror():
    server = FileServer(OMNIGLOT)
    yield server
    server.close()


def test_download_omniglot_small_from_a_mirror_verifies_and_loads(tmp_path, mirror, capsys):
    assert main(["data", "download", "omniglot-small", "--data-dir", str(tmp_path), "--mirror", mirror.url,
                 "--no-progress"]) == 0
    for res in SOURCES["omniglot-small"]:
        got = tmp_path / "omniglot" / res.filename
        assert hashlib.sha256(got.read_bytes()).hexdigest() == res.sha256
    assert len(load_omniglot(tmp_path)) == 242
    # A second run finds everything verified and downloads nothing.
    before = len(mirror.requests)
    assert main(["data", "download", "omniglot-small", "--data-dir", str(tmp_path), "--mirror", mirror.url]) == 0
    assert len(mirror.requests) == before and "already there" in capsys.readouterr().out


def test_interrupted_download_resumes_with_a_range_request(tmp_path, mirror):
    res = SOURCES["omniglot-small"][0]
    dest = tmp_path / res.filename
    mirror.fail_after = 300_000  # the connection drops after 300 kB
    with pytest.raises(DataError, match="run the same command again to resume"):
        fetch(f"{mirror.url}/{res.filename}", dest, res, progress=False)
    part = dest.with_name(dest.name + ".part")
    assert part.stat().st_size == 300_000 and not dest.exists()
    fetch(f"{mirror.url}/{res.filename}", dest, res, progress=False)
    assert mirror.requests[-1] == (f"/{res.filename}", "bytes=300000-")
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == res.sha256 and not part.exists()


def test_checksum_mismatch_deletes_the_download(tmp_path, mirror):
    wrong = Resource("all_runs.zip", "unused", ".", sha256="0" * 64)
    with pytest.raises(DataError, match="checksum mismatch for all_runs.zip"):
        fetch(f"{mirror.url}/all_runs.zip", tmp_path / "all_runs.zip", wrong, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_on_the_mirror(tmp_path, mirror, capsys):
    assert main_exit(["data", "download", "cifar10", "--data-dir", str(tmp_path), "--mirror", mirror.url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("plasticity: error:") and "HTTP 404" in err and "\n" not in err


def test_cifar_archive_is_verified_and_extracted(tmp_path, monkeypatch):
    """The CIFAR-10 path end to end on a tar.gz of the shared batches (its own checksum:
    the official archive is not in the shared data)."""
    served = tmp_path / "served"
    served.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in sorted(CIFAR.iterdir()):
            tar.add(f, arcname=f"cifar-10-batches-py/{f.name}")
    (served / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    official = SOURCES["cifar10"][0]
    local = Resource(official.filename, official.url, ".", md5=hashlib.md5(buf.getvalue()).hexdigest(), extract=True,
                     provides=official.provides)
    monkeypatch.setitem(SOURCES, "cifar10", (local,))
    server = FileServer(served)
    try:
        download("cifar10", tmp_path / "data", mirror=server.url, progress=False)
    finally:
        server.close()
    assert not (tmp_path / "data" / "cifar-10-python.tar.gz").exists()
    assert len(load_cifar10(tmp_path / "data", "test")) == 1017


def main_exit(argv) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code
