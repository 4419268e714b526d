"""TFDS's own builders prepared offline from the dataset files that Debian packages ship.

Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``) puts the
four original Fashion-MNIST IDX files in ``/usr/share/datasets/fashion-mnist/``. They are
re-compressed (each ``.gz`` differs from the original download by a few header bytes), so
TFDS's registered download checksums cannot match them; what is verified here is the
*decompressed* data, against the SHA-256 and size of each file in :data:`SOURCES`.

:func:`prepare` then runs TFDS's own ``fashion_mnist`` builder — same name, version, features,
splits and example order as a download would give — with its download manager answering each
URL with the verified local file, so nothing downstream (or anyone reading the prepared
directory) can tell it from a prepared download.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from vggjax.errors import DataError

# Where Debian's dataset-* packages put their files; VGGJAX_DEBIAN_DATASETS points elsewhere
# (a copy of the files, or a directory the tests damage on purpose).
ROOT = "/usr/share/datasets"


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset's files as a Debian package ships them.

    ``files`` maps each file name (the basename of the URL the TFDS builder asks for) to the
    SHA-256 and byte size of its decompressed content.
    """

    package: str
    folder: str
    files: Mapping[str, tuple[str, int]]


SOURCES: dict[str, Source] = {
    "fashion_mnist": Source(
        package="dataset-fashion-mnist",
        folder="fashion-mnist",
        files={
            "train-images-idx3-ubyte.gz": (
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                47_040_016,
            ),
            "train-labels-idx1-ubyte.gz": (
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                60_008,
            ),
            "t10k-images-idx3-ubyte.gz": (
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                7_840_016,
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                10_008,
            ),
        },
    ),
}


def directory(name: str, root: str | None = None) -> str:
    """The folder where Debian's package for dataset ``name`` puts its files."""
    root = root or os.environ.get("VGGJAX_DEBIAN_DATASETS") or ROOT
    return os.path.join(root, SOURCES[name].folder)


def available(name: str, root: str | None = None) -> bool:
    """Whether Debian's package for dataset ``name`` is installed (any of its files present; each
    is verified, and a missing one reported, by :func:`prepare`)."""
    if name not in SOURCES:
        return False
    folder = directory(name, root)
    return any(os.path.isfile(os.path.join(folder, f)) for f in SOURCES[name].files)


def _decompress_verified(path: str, out_path: str, sha256: str, size: int, package: str) -> None:
    """Decompress ``path`` into ``out_path``; a DataError unless it has this SHA-256 and size."""
    digest, n = hashlib.sha256(), 0
    fix = f"reinstall it with apt-get install --reinstall {package}"
    try:
        with gzip.open(path, "rb") as src, open(out_path, "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
                n += len(chunk)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path} is damaged ({e}); {fix}") from None
    if n != size or digest.hexdigest() != sha256:
        raise DataError(
            f"{path} does not hold the expected data ({n:,} bytes decompressed, expected "
            f"{size:,}, or a different SHA-256); {fix}"
        )


class _LocalFiles:
    """The part of TFDS's DownloadManager a builder's ``_split_generators`` uses, answering each
    URL with the local file of the same name."""

    def __init__(self, paths: Mapping[str, str]):
        self._paths = paths
        self.downloaded_size = 0  # nothing was downloaded

    def _local(self, url: str) -> Any:
        from etils import epath

        return epath.Path(self._paths[os.path.basename(str(url))])

    def download_and_extract(self, urls: Any) -> Any:
        if isinstance(urls, Mapping):
            return {k: self._local(u) for k, u in urls.items()}
        if isinstance(urls, (list, tuple)):
            return type(urls)(self._local(u) for u in urls)
        return self._local(urls)

    download = extract = download_and_extract


def prepare(builder: Any, root: str | None = None, log=print) -> None:
    """Prepare TFDS ``builder`` (e.g. ``tfds.builder("fashion_mnist")``) from Debian's files.

    Each file is decompressed into a temporary folder and checked against :data:`SOURCES`
    before TFDS's own builder code reads it; a missing, truncated or altered file raises a
    one-line :class:`DataError` naming the file and what to do, and leaves ``builder``'s data
    directory without a dataset (TFDS writes into a temporary folder and renames it at the end).
    """
    name = builder.name
    source = SOURCES[name]
    folder = directory(name, root)
    log(
        f"preparing {name} from Debian's {source.package} files in {folder} into {builder.data_dir}"
    )
    with tempfile.TemporaryDirectory(prefix=f"vggjax-{name}-") as tmp:
        paths = {}
        for file, (sha256, size) in source.files.items():
            src = os.path.join(folder, file)
            if not os.path.isfile(src):
                raise DataError(
                    f"{src} is missing; reinstall it with apt-get install --reinstall "
                    f"{source.package}"
                )
            paths[file] = os.path.join(tmp, file[: -len(".gz")])
            _decompress_verified(src, paths[file], sha256, size, source.package)
        # TFDS's builder asks its download manager for the files; answer with the local ones.
        builder._make_download_manager = lambda **_: _LocalFiles(paths)
        # Not TFDS's "Downloading and preparing" and "downloaded and prepared" lines: nothing is.
        builder._log_download_bytes = builder._log_download_done = lambda: None
        builder.download_and_prepare()
