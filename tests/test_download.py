"""Datasets that are not prepared yet: TFDS's own download (from a server on 127.0.0.1), the fast
one-line failure of an offline machine (a closed local port), and downloads switched off.

No test here reaches a host outside this machine: the download builder's URL points at a
server (or a closed port) on 127.0.0.1, and conftest sets ``VGGJAX_OFFLINE=1`` for every other
test.
"""

from __future__ import annotations

import functools
import http.server
import io
import socket
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from vggjax.data import get_info, load, prepare
from vggjax.errors import DataError

N_TRAIN, N_TEST = 12, 4


class VggjaxTestDownload(tfds.core.GeneratorBasedBuilder):
    """A tiny dataset whose one file is fetched from ``URL`` (set by each test)."""

    VERSION = tfds.core.Version("1.0.0")
    URL = ""
    code_path = epath.Path(__file__)  # outside tensorflow_datasets (see vggjax/data/digits.py)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(num_classes=2),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        path = dl_manager.download(self.URL)
        with np.load(path) as arrays:
            data = {k: arrays[k] for k in arrays.files}
        return {
            "train": self._generate_examples(data, 0, N_TRAIN),
            "test": self._generate_examples(data, N_TRAIN, N_TRAIN + N_TEST),
        }

    def _generate_examples(self, data, lo, hi):
        for i in range(lo, hi):
            yield i, {"image": data["image"][i], "label": int(data["label"][i])}


NAME = VggjaxTestDownload.name


def _payload() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(
        buf,
        image=rng.integers(0, 256, (N_TRAIN + N_TEST, 8, 8, 1), dtype=np.uint8),
        label=np.arange(N_TRAIN + N_TEST) % 2,
    )
    return buf.getvalue()


@pytest.fixture
def server():
    """A server on 127.0.0.1 that serves ``/data.npz`` and counts the requests."""
    body, hits = _payload(), []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200 if self.path == "/data.npz" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # keep the test output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def online(monkeypatch):
    """Downloads allowed for this test (conftest forbids them for every other test)."""
    monkeypatch.delenv(prepare.OFFLINE_ENV, raising=False)
    return functools.partial(monkeypatch.setattr, VggjaxTestDownload, "URL")


def test_unprepared_dataset_is_downloaded_and_prepared_by_tfds(tmp_path, server, online):
    url, hits = server
    online(f"{url}/data.npz")
    info = get_info(NAME, str(tmp_path))
    assert hits == ["/data.npz"]  # fetched once, by TFDS's own download manager
    assert (info.num_train_examples, info.num_test_examples, info.num_classes) == (12, 4, 2)
    assert tfds.builder(NAME, data_dir=str(tmp_path)).is_prepared()
    batches, _ = load(NAME, data_dir=str(tmp_path), global_batch_size=4, train=False)
    labels = np.concatenate([b["label"] for b in batches])
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    get_info(NAME, str(tmp_path))  # prepared now: nothing fetched again
    assert hits == ["/data.npz"]


def test_offline_machine_fails_within_seconds_in_one_line(tmp_path, online):
    port = _closed_port()
    online(f"http://127.0.0.1:{port}/data.npz")
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        get_info(NAME, str(tmp_path))
    assert time.perf_counter() - t0 < 10  # not TFDS's ~200 s of retries
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"cannot download dataset {NAME!r}: no connection to 127.0.0.1:")
    assert f"tfds build {NAME} --data_dir {tmp_path}" in message
    assert not tfds.builder(NAME, data_dir=str(tmp_path)).is_prepared()


def test_a_failed_download_is_one_line_naming_the_cause(tmp_path, server, online):
    url, hits = server
    online(f"{url}/missing.npz")  # the server answers 404
    with pytest.raises(DataError, match=f"downloading dataset '{NAME}' into .* failed") as e:
        get_info(NAME, str(tmp_path))
    assert "\n" not in str(e.value) and hits


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_downloads_switched_off_fetch_nothing_and_say_how(
    tmp_path, server, online, monkeypatch, how
):
    url, hits = server
    online(f"{url}/data.npz")
    download = how == "environment"  # VGGJAX_OFFLINE=1 wins over download=True
    if how == "environment":
        monkeypatch.setenv(prepare.OFFLINE_ENV, "1")
    with pytest.raises(DataError) as e:
        get_info(NAME, str(tmp_path), download=download)
    assert hits == []
    assert "downloads are off (--config.download=False or VGGJAX_OFFLINE=1)" in str(e.value)


def test_endpoint_is_the_proxy_when_one_is_set(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:3128")
    monkeypatch.setenv("no_proxy", "")
    assert prepare._endpoint("https://example.org/x.gz") == ("127.0.0.1", 3128)
    monkeypatch.delenv("https_proxy")
    assert prepare._endpoint("https://example.org:8443/x.gz") == ("example.org", 8443)
    assert prepare._endpoint("gs://bucket/x") is None
