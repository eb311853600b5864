"""Data loaders on CIFAR-10 / Omniglot files in their standard layouts (small generated
ones, tests/datagen.py; the real shared files where `PLASTICITY_TEST_DATA` has them),
their errors, the cache, and `plasticity data download` against a real local HTTP mirror."""

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
from tests.conftest import SHARED_DATA, needs_shared_data
from tests.servers import FileServer

# Per-class counts of the shared test batch (shared/data/README.md).
TEST_LABEL_COUNTS = [105, 93, 100, 104, 92, 87, 114, 102, 110, 110]
PER_BATCH = 30  # images per generated batch (tests/conftest.py generated_data)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PLASTICITY_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def root(generated_data):
    return generated_data


@pytest.fixture
def CIFAR(generated_data):  # noqa: N802 - the folder, named as in the data layout
    return generated_data / "cifar10"


@pytest.fixture
def OMNIGLOT(generated_data):  # noqa: N802
    return generated_data / "omniglot"


@pytest.mark.parametrize("split,count", [("train", 4 * PER_BATCH), ("validation", PER_BATCH), ("test", PER_BATCH),
                                         ("all-train", 5 * PER_BATCH)])
def test_cifar_splits_shapes_and_ranges(root, split, count):
    data = load_cifar10(root, split)
    assert data.images.shape == (count, 32, 32) and data.images.dtype == np.float32
    assert data.labels.shape == (count,) and set(np.unique(data.labels)) == set(range(10))
    assert data.images.min() >= -1.0 and data.images.max() <= 1.0
    # Every image reaches +-1 exactly and has zero mean (the reference normalisation).
    assert np.allclose(np.abs(data.images).max(axis=(1, 2)), 1.0)
    assert np.abs(data.images.mean(axis=(1, 2))).max() < 1e-5
    if split == "test":  # written as (i + 5) % 10 by tests/datagen.py
        assert data.labels[:10].tolist() == [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]


@needs_shared_data
def test_shared_cifar_test_batch():
    data = load_cifar10(SHARED_DATA, "test")
    assert data.images.shape == (1017, 32, 32) and len(load_cifar10(SHARED_DATA, "all-train")) == 5085
    assert np.bincount(data.labels).tolist() == TEST_LABEL_COUNTS
    assert data.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_cifar_grayscale_matches_the_reference_formula(root, CIFAR):  # noqa: N803
    with open(CIFAR / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"][:5].reshape(5, 3, 32, 32).astype(np.float64)
    gray = raw.sum(1)
    gray -= gray.mean(axis=(1, 2), keepdims=True)
    gray /= np.abs(gray).max(axis=(1, 2), keepdims=True)
    assert np.allclose(load_cifar10(root, "test").images[:5], gray, atol=1e-6)


def test_cifar_is_converted_once_then_read_from_the_cache(monkeypatch, tmp_path, root):
    first = load_cifar10(root, "validation")
    assert list((tmp_path / "cache").glob("cifar10-gray-*.npz"))

    def no_reading(path):
        raise AssertionError(f"{path} was read again although it is cached")

    monkeypatch.setattr(cifar_module, "read_batch", no_reading)
    again = load_cifar10(root, "validation")
    assert np.array_equal(first.images, again.images) and np.array_equal(first.labels, again.labels)


def _cifar_copy(tmp_path, cifar, damage=None):
    d = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar, d)
    if damage:
        damage(d)
    return tmp_path


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "data_batch_5").write_bytes((d / "data_batch_5").read_bytes()[:50_000]),
     "data_batch_5 is truncated or corrupt"),
    (lambda d: (d / "data_batch_5").write_bytes(b"not a pickle at all"), "data_batch_5 is truncated or corrupt"),
    (lambda d: (d / "data_batch_5").unlink(), "data_batch_5 is missing"),
    (lambda d: (d / "data_batch_5").write_bytes(pickle.dumps(_RunsCode(d / "pwned"))),
     r"data_batch_5 is not a CIFAR-10 batch \(it refers to posix.system"),
], ids=["truncated", "garbage", "missing", "foreign-pickle"])
def test_cifar_damaged_files_name_the_file_and_the_fix(tmp_path, CIFAR, damage, message):  # noqa: N803
    root = _cifar_copy(tmp_path, CIFAR, damage)
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


def test_omniglot_set_characters_and_pixels(root):
    chars = load_omniglot(root)
    # 3 alphabets x 8 characters x 4 drawings of 105x105 (tests/datagen.py), resized to 31x31.
    assert chars.images.shape == (24, 4, 31, 31) and len(chars.names) == 24
    assert chars.alphabets() == ["Alphabet_0", "Alphabet_1", "Alphabet_2"]
    assert chars.names[0] == "Alphabet_0/character01" and set(chars.sets) == {"images_background_small1"}
    assert chars.images.min() >= 0.0 and chars.images.max() <= 1.0
    assert 0.02 < chars.images.mean() < 0.3  # strokes are ink (1) on an empty background


@needs_shared_data
def test_shared_omniglot_sets_characters_and_pixels():
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


def test_omniglot_runs(root):
    runs = load_omniglot_runs(root)
    assert runs.support.shape == runs.queries.shape == (2, 20, 31, 31)
    # Each run's 20 test items map onto its 20 training classes, one each.
    assert all(sorted(a) == list(range(20)) for a in runs.answers.tolist())


def test_omniglot_corrupt_zip_names_the_file(tmp_path, OMNIGLOT):  # noqa: N803
    d = tmp_path / "omniglot"
    d.mkdir()
    (d / "images_background_small1.zip").write_bytes((OMNIGLOT / "images_background_small1.zip").read_bytes()[:5000])
    with pytest.raises(DataError, match="images_background_small1.zip is truncated or corrupt"):
        load_omniglot(tmp_path)


def test_omniglot_reads_an_extracted_tree(tmp_path, root, OMNIGLOT):  # noqa: N803
    import zipfile

    with zipfile.ZipFile(OMNIGLOT / "images_background_small1.zip") as z:
        z.extractall(tmp_path)
    from_tree = load_omniglot(tmp_path)
    from_zip = load_omniglot(root, ("images_background_small1",))
    assert from_tree.names == from_zip.names
    assert np.array_equal(from_tree.images, from_zip.images)


# --- download ---------------------------------------------------------------------------

@pytest.fixture
def mirror(OMNIGLOT, monkeypatch):  # noqa: N803
    """A local HTTP server holding the generated Omniglot files, with `omniglot-small`'s
    checksums set to theirs (the official files are not needed)."""
    official = {r.filename: r for r in SOURCES["omniglot-small"]}
    local = tuple(Resource(name, official[name].url, "omniglot",
                           sha256=hashlib.sha256((OMNIGLOT / name).read_bytes()).hexdigest())
                  for name in ("images_background_small1.zip", "all_runs.zip"))
    monkeypatch.setitem(SOURCES, "omniglot-small", local)
    server = FileServer(OMNIGLOT)
    yield server
    server.close()


def test_download_omniglot_small_from_a_mirror_verifies_and_loads(tmp_path, mirror, capsys):
    assert main(["data", "download", "omniglot-small", "--data-dir", str(tmp_path), "--mirror", mirror.url,
                 "--no-progress"]) == 0
    for res in SOURCES["omniglot-small"]:
        got = tmp_path / "omniglot" / res.filename
        assert hashlib.sha256(got.read_bytes()).hexdigest() == res.sha256
    assert len(load_omniglot(tmp_path)) == 24
    # A second run finds everything verified and downloads nothing.
    before = len(mirror.requests)
    assert main(["data", "download", "omniglot-small", "--data-dir", str(tmp_path), "--mirror", mirror.url]) == 0
    assert len(mirror.requests) == before and "already there" in capsys.readouterr().out


def test_interrupted_download_resumes_with_a_range_request(tmp_path, mirror):
    res = SOURCES["omniglot-small"][0]
    dest = tmp_path / res.filename
    cut = 20_000
    assert mirror.root.joinpath(res.filename).stat().st_size > 2 * cut
    mirror.fail_after = cut  # the connection drops after 20 kB
    with pytest.raises(DataError, match="run the same command again to resume"):
        fetch(f"{mirror.url}/{res.filename}", dest, res, progress=False)
    part = dest.with_name(dest.name + ".part")
    assert part.stat().st_size == cut and not dest.exists()
    fetch(f"{mirror.url}/{res.filename}", dest, res, progress=False)
    assert mirror.requests[-1] == (f"/{res.filename}", f"bytes={cut}-")
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


def test_cifar_archive_is_verified_and_extracted(tmp_path, monkeypatch, CIFAR):  # noqa: N803
    """The CIFAR-10 path end to end on a tar.gz of generated batches (its own checksum:
    the official archive is not needed)."""
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
    assert len(load_cifar10(tmp_path / "data", "test")) == PER_BATCH


def main_exit(argv) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


@pytest.mark.parametrize("style", ["py3-p2", "py3-p3", "py3-p4", "py3-p5", "py3-str-p2", "py3-str-p4", "py3-str-p5"])
def test_cifar_batches_written_by_python3_load_like_the_official_format(tmp_path, root, style):
    """Any pickle protocol, bytes or str keys: the same images as the Python 2 files."""
    from tests.datagen import write_cifar

    mine = write_cifar(tmp_path / style, style=style)
    for split in ("test", "train"):
        a, b = load_cifar10(mine, split), load_cifar10(root, split)
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)


def test_cifar_pickle_without_the_batch_entries_says_what_is_wrong(tmp_path, CIFAR):  # noqa: N803
    root = _cifar_copy(tmp_path, CIFAR, lambda d: (d / "test_batch").write_bytes(pickle.dumps({"pixels": [1]})))
    with pytest.raises(DataError, match=r"test_batch has no 'data' and 'labels' entries \(it holds pixels\)"):
        load_cifar10(root, "test")


def test_foreign_pickle_is_refused_saying_why_not_to_delete(tmp_path, CIFAR):  # noqa: N803
    root = _cifar_copy(tmp_path, CIFAR, lambda d: (d / "test_batch").write_bytes(pickle.dumps(_RunsCode(d / "x"))))
    with pytest.raises(DataError, match="refused without running it") as e:
        load_cifar10(root, "test")
    assert "delete it" not in str(e.value)


def test_data_check_reports_a_test_only_folder(tmp_path, capsys):
    from tests.datagen import write_cifar

    write_cifar(tmp_path, files=("test_batch",))
    assert main(["data", "check", "cifar10", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cifar10 train: not present (data_batch_1, data_batch_2, data_batch_3, data_batch_4 missing)" in out
    assert "cifar10 test: 30 images [32, 32]" in out
