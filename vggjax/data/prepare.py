"""Preparing a TFDS dataset that is not there yet, as a user expects: built, read from local
files, or downloaded.

On first use of a dataset that is not prepared in ``data_dir``:

* the embedded digits datasets are built from scikit-learn's bundled files;
* datasets whose files a Debian package ships (``fashion_mnist``: ``apt-get install
  dataset-fashion-mnist``) are prepared from them, verified (:mod:`vggjax.data.debian`);
* any other dataset is downloaded and prepared by TFDS's own ``download_and_prepare``, with its
  progress output, as ``tfds.load`` and the Flax examples do — unless downloads are off
  (``download=False``, ``--config.download=False``, or ``VGGJAX_OFFLINE=1`` in the environment,
  which wins). Datasets that need a manual download (ImageNet) are never started here.

Without a network a download fails within seconds with one line, not after TFDS's retries:
before TFDS fetches anything, each host its builder asks for (or the proxy in between) must
accept a TCP connection within :data:`CONNECT_TIMEOUT_S`.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

from vggjax.data import debian
from vggjax.errors import DataError

CONNECT_TIMEOUT_S = 5.0
OFFLINE_ENV = "VGGJAX_OFFLINE"


def downloads_allowed(download: bool = True) -> bool:
    """Whether a dataset may be downloaded: ``download`` and not ``VGGJAX_OFFLINE=1``."""
    return bool(download) and os.environ.get(OFFLINE_ENV, "").lower() not in ("1", "true", "yes")


def prepare(name: str, builder: Any, embedded: bool, manual: bool, download: bool = True) -> None:
    """Prepare ``builder`` (dataset ``name``, not prepared yet) if vggjax knows how.

    Returns without preparing when the dataset needs a manual download or downloads are off;
    the caller's "not prepared" error then says what to do. Raises a one-line
    :class:`DataError` when a download or the Debian files fail.
    """
    if embedded:
        # scikit-learn's bundled files: no network, so not TFDS's "Downloading and preparing" line
        _log(f"building {name} from scikit-learn's bundled digits into {builder.data_dir}")
        builder._log_download_bytes = builder._log_download_done = lambda: None
        _tolerating_others(builder, lambda: _quietly(builder.download_and_prepare))
    elif debian.available(builder.name):
        _tolerating_others(builder, lambda: debian.prepare(builder, log=_log))
    elif not manual and downloads_allowed(download):
        _download(name, builder)


def _log(message: str) -> None:
    print(message, flush=True)  # beside TFDS's own progress output, on stdout


def _tolerating_others(builder: Any, run) -> None:
    """``run()``; if it fails because another process (multi-host, same ``data_dir``) prepared
    the dataset first, that is success."""
    try:
        run()
    except Exception:
        if not builder.is_prepared():
            raise


def _quietly(run) -> None:
    """``run()`` with TFDS's progress bars off, restoring the user's choice afterwards."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import tqdm_utils

    was_active = tqdm_utils._active  # tfds has no public getter
    tfds.display_progress_bar(False)
    try:
        run()
    finally:
        tfds.display_progress_bar(was_active)


def _download(name: str, builder: Any) -> None:
    """TFDS's own download_and_prepare, failing fast (one line) when the hosts are unreachable."""
    make_manager = builder._make_download_manager
    builder._make_download_manager = lambda **kw: _CheckedDownloads(make_manager(**kw))
    root = builder.data_dir_root
    try:
        _tolerating_others(builder, builder.download_and_prepare)
    except DataError:
        raise
    except Exception as e:  # TFDS's download errors have many types; report any as one line.
        elsewhere = (
            f"or prepare it on a machine with network (`tfds build {name} --data_dir {root}`) "
            f"and copy its folder into {root}"
        )
        if isinstance(e, Unreachable):
            raise DataError(
                f"cannot download dataset {name!r}: {e} (this machine looks offline); connect it "
                f"and rerun, {elsewhere}"
            ) from None
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise DataError(
            f"downloading dataset {name!r} into {root} failed ({type(e).__name__}: {first}); "
            f"rerun to retry, {elsewhere}"
        ) from None
    finally:
        del builder._make_download_manager  # back to the class's method


class _CheckedDownloads:
    """TFDS's DownloadManager, checking that the hosts of the URLs are reachable first."""

    def __init__(self, manager: Any):
        self._manager = manager

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._manager, attr)

    def _checked(self, method: str, urls: Any, *args: Any, **kwargs: Any) -> Any:
        check_reachable(_urls(urls))
        return getattr(self._manager, method)(urls, *args, **kwargs)

    def download(self, urls: Any, *args: Any, **kwargs: Any) -> Any:
        return self._checked("download", urls, *args, **kwargs)

    def download_and_extract(self, urls: Any, *args: Any, **kwargs: Any) -> Any:
        return self._checked("download_and_extract", urls, *args, **kwargs)


def _urls(tree: Any) -> list[str]:
    """The URL strings in a builder's (possibly nested) download request."""
    if isinstance(tree, Mapping):
        return [u for v in tree.values() for u in _urls(v)]
    if isinstance(tree, Iterable) and not isinstance(tree, (str, bytes)):
        return [u for v in tree for u in _urls(v)]
    url = getattr(tree, "url", tree)  # tfds.download.Resource has .url
    return [str(url)] if isinstance(url, str) else []


def _endpoint(url: str) -> tuple[str, int] | None:
    """The (host, port) a request for ``url`` connects to: its proxy's where one is set."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https", "ftp") or not parts.hostname:
        return None  # gs://, local paths: not a socket to check
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return proxy_parts.hostname or "", proxy_parts.port or 8080
    default = {"http": 80, "https": 443, "ftp": 21}[parts.scheme]
    return parts.hostname, parts.port or default


class Unreachable(OSError):
    """No TCP connection to a host a dataset download needs."""


def check_reachable(urls: Iterable[str], timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise :class:`Unreachable` unless every host (or proxy) of ``urls`` accepts a TCP
    connection within ``timeout`` seconds."""
    for host, port in sorted({e for e in map(_endpoint, urls) if e}):
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise Unreachable(f"no connection to {host}:{port} ({reason})") from None
