"""Image datasets from files: IDX and CIFAR readers, registry entries, download over loopback.

Downloads go to HTTPS servers on 127.0.0.1 with a self-signed certificate made here, trusted
through `download`'s `ssl_context`; the files they serve are pinned by monkeypatching the
dataset's digests and sizes (`pin_served`)."""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import hashlib
import io
import ipaddress
import os
import pickle
import re
import socket
import ssl
import struct
import tarfile
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from gradreg.data import available_datasets, downloader, load_dataset, standard_files
from gradreg.data.downloader import DownloadError
from gradreg.data.standard_files import UnsafePickleError, read_cifar_batch, read_idx
from tests.helpers.datafiles import N_TEST, N_TRAIN, idx_bytes, make_idx_dataset, write

IDX_NAMES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
CIFAR_BATCHES = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]


@pytest.fixture(autouse=True)
def hermetic_environment(monkeypatch):
    """No proxies, no data-dir or mirror settings, and no connection beyond 127.0.0.1."""
    for variable in list(os.environ):
        if variable.lower().endswith("_proxy"):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.delenv(standard_files.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(downloader.MIRROR_ENV, raising=False)
    connect = socket.create_connection

    def loopback_only(address, *args, **kwargs):
        assert address[0] == "127.0.0.1", f"test tried to reach {address}"
        return connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", loopback_only)


# ---------------------------------------------------------------- writing the real formats


def python2_style_pickle(batch: dict) -> bytes:
    # the published batches were pickled by Python 2 with numpy 1, which names numpy.core
    return pickle.dumps(batch, protocol=2).replace(b"numpy._core.", b"numpy.core.")


def make_cifar_dataset(batches_dir: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Tiny CIFAR-10 batches: 5 x 14 train images with distinct channel ranges, 10 test images
    of which the first three are pure red, pure green and pure blue."""
    rng = np.random.default_rng(seed)
    x_train = np.concatenate(
        [
            rng.integers(0, 256, (N_TRAIN, 1, 32, 32)),
            rng.integers(0, 128, (N_TRAIN, 1, 32, 32)),
            rng.integers(128, 256, (N_TRAIN, 1, 32, 32)),
        ],
        axis=1,
    ).astype(np.uint8)
    x_train[:, 0, 0, 0] = 3 * np.arange(N_TRAIN)
    y_train = rng.permutation(np.arange(N_TRAIN) % 10)
    x_test = rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8)
    x_test[:3] = 0
    for channel in range(3):
        x_test[channel, channel] = 255
    y_test = np.arange(10)
    batches_dir.mkdir(parents=True, exist_ok=True)
    for k, rows in enumerate(np.split(np.arange(N_TRAIN), 5), start=1):
        write_cifar_batch(batches_dir / f"data_batch_{k}", x_train[rows], y_train[rows])
    write_cifar_batch(batches_dir / "test_batch", x_test, y_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    batch = {
        b"batch_label": b"tiny batch",
        b"labels": [int(label) for label in labels],
        b"data": images.reshape(len(images), 3 * 32 * 32),  # R plane, G plane, B plane
        b"filenames": [f"image_{i}.png".encode() for i in range(len(images))],
    }
    path.write_bytes(python2_style_pickle(batch))


def make_cifar_tarball(path: Path, batches_dir: Path, extra: dict[str, bytes] | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(batches_dir, arcname="cifar-10-batches-py")
        for name, content in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


@dataclasses.dataclass
class Tls:
    server: ssl.SSLContext  # presents the self-signed certificate for 127.0.0.1
    client: ssl.SSLContext  # trusts only that certificate


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Tls:
    """A self-signed certificate for 127.0.0.1, made with the `cryptography` package."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    return Tls(server=server, client=ssl.create_default_context(cafile=str(cert_file)))


@pytest.fixture
def serve(tls) -> Iterator[Callable[..., tuple[str, list[str]]]]:
    """Start an HTTPS (or, with `https=False`, HTTP) server on 127.0.0.1 for a directory;
    gives its URL and a request log. `redirects` maps a request path to a Location to send
    with a 302; `endless` streams bytes without a Content-Length for every file it serves."""
    servers = []

    def start(
        directory: Path,
        *,
        https: bool = True,
        redirects: dict[str, str] | None = None,
        endless: bool = False,
    ) -> tuple[str, list[str]]:
        requests: list[str] = []

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(directory), **kwargs)

            def do_GET(self):
                requests.append(self.path)
                if redirects and self.path in redirects:
                    self.send_response(302)
                    self.send_header("Location", redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif endless:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.end_headers()  # no Content-Length: the body ends when we close
                    try:
                        for _ in range(1024):  # 64 MiB at most, if nobody hangs up
                            self.wfile.write(b"\0" * (1 << 16))
                    except (OSError, ssl.SSLError):
                        pass  # the client hung up, as it should
                else:
                    super().do_GET()

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if https:
            server.socket = tls.server.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        scheme = "https" if https else "http"
        return f"{scheme}://127.0.0.1:{server.server_address[1]}/", requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pin_served(monkeypatch, name: str, directory: Path, sizes: dict[str, int] | None = None):
    """Pin dataset `name`'s files to those in `directory`: their sha256, and their size (or
    `sizes[file]`) as the cap, as the real pins pin the real files."""
    source = downloader._SOURCES[name]
    pins = dict(source.pins)
    for path in directory.iterdir():
        if path.name in pins:
            size = (sizes or {}).get(path.name, path.stat().st_size)
            pins[path.name] = downloader._Pin(sha256_of(path), size)
    monkeypatch.setitem(downloader._SOURCES, name, dataclasses.replace(source, pins=pins))


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"https://127.0.0.1:{port}/"


# ---------------------------------------------------------------- helpers for checks


def source_ids(standardised: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Which raw example each standardised row came from, matched by a unique pixel.

    Standardisation is increasing in each pixel, so ranks of that pixel agree."""
    ids = np.empty(len(standardised), dtype=np.int64)
    ids[np.argsort(standardised)] = np.argsort(raw)
    return ids


def train_and_val_ids(dataset, raw_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pooled = torch.cat([dataset.x_train, dataset.x_val]).numpy()
    ids = source_ids(pooled[:, 0, 0, 0], raw_train[:, 0, 0, 0])
    return ids[: dataset.n_train], ids[dataset.n_train :]


def assert_close(actual: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual.double().numpy(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("type_code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_every_type_plain_and_gzip(tmp_path, type_code, suffix):
    array = np.arange(-12, 12).reshape(2, 3, 4) * (1 if type_code != 0x08 else -1) % 100
    path = write(tmp_path / f"values{suffix}", idx_bytes(array, type_code))
    loaded = read_idx(path)
    assert loaded.shape == (2, 3, 4) and loaded.dtype.isnative
    assert np.array_equal(loaded, array)


def test_read_idx_finds_gzip_and_prefers_plain(tmp_path):
    write(tmp_path / "labels.gz", idx_bytes(np.array([1, 2, 3], dtype=np.uint8)))
    assert read_idx(tmp_path / "labels").tolist() == [1, 2, 3]
    write(tmp_path / "labels", idx_bytes(np.array([7, 8], dtype=np.uint8)))
    assert read_idx(tmp_path / "labels").tolist() == [7, 8]


GOOD = idx_bytes(np.zeros((2, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"\x01\x02" + GOOD[2:], "bad IDX magic number"),
        (GOOD[:2] + b"\x07" + GOOD[3:], "bad IDX magic number"),
        (GOOD[:2], "truncated"),
        (GOOD[:9], "truncated IDX header"),
        (GOOD[:-1], "truncated IDX file"),
        (GOOD + b"\x00", "size mismatch"),
    ],
)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_corrupt_idx_names_the_file(tmp_path, content, pattern, suffix):
    path = write(tmp_path / f"broken-idx1-ubyte{suffix}", content)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*{pattern}"):
        read_idx(path)


def test_corrupt_gzip_names_the_file(tmp_path):
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(GOOD)[:-6])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_idx(path)


def test_corrupt_file_in_a_dataset_is_named(tmp_path):
    make_idx_dataset(tmp_path / "mnist")
    path = tmp_path / "mnist" / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_dataset("mnist", data_dir=tmp_path)


# ---------------------------------------------------------------- mnist and fashion_mnist


def test_new_datasets_are_listed():
    names = available_datasets()
    for name in ["mnist", "fashion_mnist", "cifar10"]:
        assert "official test" in names[name]


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_dataset_shapes_and_official_test_split(tmp_path, name, gz):
    raw = make_idx_dataset(tmp_path / name, gz=gz)
    dataset = load_dataset(name, data_dir=str(tmp_path))
    assert dataset.input_shape == (1, 28, 28) and dataset.n_classes == 10
    assert dataset.n_val == round(0.15 * N_TRAIN) and dataset.n_train + dataset.n_val == N_TRAIN
    assert dataset.n_test == N_TEST
    for x, y in [
        (dataset.x_train, dataset.y_train),
        (dataset.x_val, dataset.y_val),
        (dataset.x_test, dataset.y_test),
    ]:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(y), 1, 28, 28)
        assert y.min() >= 0 and y.max() <= 9
    assert dataset.y_test.tolist() == raw["t10k-labels-idx1-ubyte"].tolist()
    assert sorted(dataset.y_val.tolist()) == list(range(10))  # stratified: one per class


def test_idx_standardised_with_train_statistics_only(tmp_path):
    raw = make_idx_dataset(tmp_path / "mnist")
    images, labels = raw["train-images-idx3-ubyte"], raw["train-labels-idx1-ubyte"]
    dataset = load_dataset("mnist", data_dir=tmp_path, split_seed=4)

    train_ids, val_ids = train_and_val_ids(dataset, images[:, None])
    assert sorted([*train_ids, *val_ids]) == list(range(N_TRAIN))  # val carved from train
    unit = images / 255.0
    mean, std = unit[train_ids].mean(), unit[train_ids].std()
    assert_close(dataset.x_train[:, 0], (unit[train_ids] - mean) / std)
    assert_close(dataset.x_val[:, 0], (unit[val_ids] - mean) / std)
    test_images = raw["t10k-images-idx3-ubyte"] / 255.0
    assert_close(dataset.x_test[:, 0], (test_images - mean) / std)
    assert dataset.y_train.tolist() == labels[train_ids].tolist()
    assert dataset.y_val.tolist() == labels[val_ids].tolist()


def test_split_seed_moves_validation_but_not_the_test_set(tmp_path):
    raw = make_idx_dataset(tmp_path / "mnist")
    images = raw["train-images-idx3-ubyte"][:, None]
    first, again = (load_dataset("mnist", data_dir=tmp_path, split_seed=1) for _ in range(2))
    other = load_dataset("mnist", data_dir=tmp_path, split_seed=2)
    assert torch.equal(first.x_val, again.x_val)
    assert set(train_and_val_ids(first, images)[1]) != set(train_and_val_ids(other, images)[1])
    assert torch.equal(first.y_test, other.y_test)


def test_explicit_test_fraction_is_refused_before_reading_files(tmp_path):
    with pytest.raises(ValueError, match=r"'mnist' has an official test split.*test_fraction"):
        load_dataset("mnist", data_dir=tmp_path, test_fraction=0.2)


def test_too_few_examples_for_validation(tmp_path):
    make_idx_dataset(tmp_path / "mnist")
    with pytest.raises(ValueError, match=r"val split would hold 7 of 70.*val_fraction"):
        load_dataset("mnist", data_dir=tmp_path, val_fraction=0.1)


def test_data_dir_defaults_to_env_then_local_data(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "from_env" / "mnist")
    make_idx_dataset(tmp_path / "data" / "mnist", seed=1)
    monkeypatch.setenv(standard_files.DATA_DIR_ENV, str(tmp_path / "from_env"))
    from_env = load_dataset("mnist")
    monkeypatch.delenv(standard_files.DATA_DIR_ENV)
    monkeypatch.chdir(tmp_path)
    assert standard_files.default_data_dir() == tmp_path / "data"
    local = load_dataset("mnist")
    assert not torch.equal(from_env.x_test, local.x_test)


def test_missing_files_are_all_listed_with_the_download_command(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        load_dataset("fashion_mnist", data_dir=tmp_path)
    message = str(caught.value)
    for name in IDX_NAMES:
        assert str(tmp_path / "fashion_mnist" / name) in message
    assert f"python -m gradreg data download fashion_mnist --dir {tmp_path}" in message
    assert "by hand" in message


def test_only_the_missing_files_are_listed(tmp_path):
    make_idx_dataset(tmp_path / "mnist")
    for name in IDX_NAMES[2:]:
        (tmp_path / "mnist" / name).unlink()
    with pytest.raises(FileNotFoundError) as caught:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(caught.value)
    assert all(str(tmp_path / "mnist" / name) in message for name in IDX_NAMES[2:])
    assert not any(str(tmp_path / "mnist" / name) in message for name in IDX_NAMES[:2])


# ---------------------------------------------------------------- cifar10


def test_cifar_shapes_channel_order_and_per_channel_standardisation(tmp_path):
    raw = make_cifar_dataset(tmp_path / "cifar10" / "cifar-10-batches-py")
    dataset = load_dataset("cifar10", data_dir=tmp_path)
    assert dataset.input_shape == (3, 32, 32) and dataset.n_classes == 10
    assert dataset.x_train.shape == (dataset.n_train, 3, 32, 32)
    assert dataset.n_train + dataset.n_val == N_TRAIN and dataset.n_test == 10
    assert dataset.y_test.tolist() == raw["y_test"].tolist()
    # pure red, green and blue test images: that channel is the largest after loading
    for colour in range(3):
        channel_means = dataset.x_test[colour].mean(dim=(1, 2))
        assert int(channel_means.argmax()) == colour

    train_ids, val_ids = train_and_val_ids(dataset, raw["x_train"])
    unit = raw["x_train"] / 255.0
    mean = unit[train_ids].mean(axis=(0, 2, 3), keepdims=True)[0]
    std = unit[train_ids].std(axis=(0, 2, 3), keepdims=True)[0]
    assert_close(dataset.x_train, (unit[train_ids] - mean) / std)
    assert_close(dataset.x_val, (unit[val_ids] - mean) / std)
    assert_close(dataset.x_test, (raw["x_test"] / 255.0 - mean) / std)
    assert dataset.y_val.tolist() == raw["y_train"][val_ids].tolist()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batch_pickled_by_modern_numpy_loads(tmp_path, protocol):
    images = np.arange(2 * 3072).reshape(2, 3, 32, 32).astype(np.uint8)
    batch = {b"data": images.reshape(2, 3072), b"labels": [3, 9]}
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    loaded, labels = read_cifar_batch(path)
    assert np.array_equal(loaded, images) and labels.tolist() == [3, 9]


class RunsCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("payload", ["os.system", "eval"])
def test_malicious_pickle_is_refused(tmp_path, payload):
    marker = tmp_path / "pwned"
    attack = RunsCommand(marker) if payload == "os.system" else CallsEval()
    batches = tmp_path / "cifar10" / "cifar-10-batches-py"
    make_cifar_dataset(batches)
    (batches / "data_batch_3").write_bytes(pickle.dumps({b"data": attack, b"labels": []}))
    with pytest.raises(UnsafePickleError, match=r"data_batch_3: refusing to load"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()


def test_garbage_cifar_batch_is_a_value_error_naming_the_file(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match="N x 3072 uint8"):
        read_cifar_batch(path)


def test_missing_cifar_batches_are_listed(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        load_dataset("cifar10", data_dir=tmp_path)
    for batch in CIFAR_BATCHES:
        assert str(tmp_path / "cifar10" / "cifar-10-batches-py" / batch) in str(caught.value)


# ---------------------------------------------------------------- download


def test_download_idx_files_then_skip_them(tmp_path, serve, tls, monkeypatch):
    raw = make_idx_dataset(tmp_path / "mirror", gz=True)
    pin_served(monkeypatch, "mnist", tmp_path / "mirror")
    url, requests = serve(tmp_path / "mirror")
    data_dir = tmp_path / "data"
    paths = downloader.download("mnist", data_dir, base_url=url, timeout=5, ssl_context=tls.client)
    assert paths == [data_dir / "mnist" / f"{name}.gz" for name in IDX_NAMES]
    assert sorted(requests) == sorted(f"/{name}.gz" for name in IDX_NAMES)
    assert sorted(p.name for p in (data_dir / "mnist").iterdir()) == sorted(
        f"{name}.gz" for name in IDX_NAMES
    )  # no temp files left
    for name in IDX_NAMES:  # the files kept are the pinned ones
        assert sha256_of(data_dir / "mnist" / f"{name}.gz") == sha256_of(
            tmp_path / "mirror" / f"{name}.gz"
        )
    dataset = load_dataset("mnist", data_dir=data_dir)
    assert dataset.y_test.tolist() == raw["t10k-labels-idx1-ubyte"].tolist()

    again = downloader.download("mnist", data_dir, base_url=url, timeout=5, ssl_context=tls.client)
    assert again == paths
    assert len(requests) == len(IDX_NAMES)


def test_download_from_mirror_env_uses_the_dataset_subdirectory(tmp_path, serve, tls, monkeypatch):
    make_idx_dataset(tmp_path / "mirror" / "fashion_mnist", gz=True)
    pin_served(monkeypatch, "fashion_mnist", tmp_path / "mirror" / "fashion_mnist")
    url, requests = serve(tmp_path / "mirror")
    monkeypatch.setenv(downloader.MIRROR_ENV, url)
    downloader.download("fashion_mnist", tmp_path / "data", timeout=5, ssl_context=tls.client)
    assert all(path.startswith("/fashion_mnist/") for path in requests)
    assert load_dataset("fashion_mnist", data_dir=tmp_path / "data").n_test == N_TEST


def test_download_rejects_a_wrong_file_and_keeps_nothing(tmp_path, serve, tls, monkeypatch):
    # pinned as served, so the digest passes and the IDX reader is what refuses it
    make_idx_dataset(tmp_path / "mirror", gz=True)
    (tmp_path / "mirror" / "t10k-images-idx3-ubyte.gz").write_bytes(b"<html>not found</html>")
    pin_served(monkeypatch, "mnist", tmp_path / "mirror")
    url, _ = serve(tmp_path / "mirror")
    with pytest.raises(ValueError, match=re.escape(f"{url}t10k-images-idx3-ubyte.gz")):
        downloader.download(
            "mnist", tmp_path / "data", base_url=url, timeout=5, ssl_context=tls.client
        )
    assert not list((tmp_path / "data" / "mnist").glob("t10k-images*"))


def test_download_refuses_a_file_whose_digest_is_not_the_pinned_one(
    tmp_path, serve, tls, monkeypatch
):
    make_idx_dataset(tmp_path / "mirror", gz=True)
    served = tmp_path / "mirror" / "train-labels-idx1-ubyte.gz"
    pin_served(monkeypatch, "mnist", tmp_path / "mirror", sizes={served.name: 1 << 20})
    expected = sha256_of(served)
    # a valid IDX file, but not the pinned one
    labels = np.array(standard_files.read_idx(served))[::-1]
    served.write_bytes(gzip.compress(idx_bytes(labels), mtime=0))
    actual = sha256_of(served)
    assert actual != expected
    url, _ = serve(tmp_path / "mirror")
    with pytest.raises(DownloadError) as caught:
        downloader.download(
            "mnist", tmp_path / "data", base_url=url, timeout=5, ssl_context=tls.client
        )
    message = str(caught.value)
    assert "train-labels-idx1-ubyte.gz" in message
    assert f"expected sha256 {expected}" in message and f"got {actual}" in message
    assert f"{url}train-labels-idx1-ubyte.gz" in message
    assert not list((tmp_path / "data" / "mnist").glob("*train-labels*"))  # nor a .part file


def test_download_refuses_a_declared_body_over_the_cap(tmp_path, serve, tls, monkeypatch):
    make_idx_dataset(tmp_path / "mirror", gz=True)
    big = tmp_path / "mirror" / "train-images-idx3-ubyte.gz"
    cap = big.stat().st_size - 1
    pin_served(monkeypatch, "mnist", tmp_path / "mirror", sizes={big.name: cap})
    url, _ = serve(tmp_path / "mirror")
    with pytest.raises(DownloadError, match=rf"{big.name}.*more than its {cap} bytes"):
        downloader.download(
            "mnist", tmp_path / "data", base_url=url, timeout=5, ssl_context=tls.client
        )
    assert not list((tmp_path / "data" / "mnist").glob("*train-images*"))


def test_download_cuts_off_an_endless_body(tmp_path, serve, tls, monkeypatch):
    make_idx_dataset(tmp_path / "mirror", gz=True)
    pin_served(monkeypatch, "mnist", tmp_path / "mirror")  # a few KiB each
    url, requests = serve(tmp_path / "mirror", endless=True)  # 64 MiB, no Content-Length
    cap = downloader._SOURCES["mnist"].pins["train-images-idx3-ubyte.gz"].size
    with pytest.raises(DownloadError, match=rf"train-images-idx3-ubyte.gz.*more than its {cap}"):
        downloader.download(
            "mnist", tmp_path / "data", base_url=url, timeout=5, ssl_context=tls.client
        )
    assert requests == ["/train-images-idx3-ubyte.gz"]
    assert not [p for p in (tmp_path / "data" / "mnist").iterdir()]


@pytest.mark.parametrize("via", ["base_url", "env"])
@pytest.mark.parametrize("mirror", ["http://{host}/", "HTTP://{host}/", "ftp://{host}/", "{host}"])
def test_download_refuses_a_mirror_that_is_not_https(tmp_path, serve, monkeypatch, via, mirror):
    (tmp_path / "mirror").mkdir()
    url, requests = serve(tmp_path / "mirror", https=False)
    mirror = mirror.format(host=url.removeprefix("http://").rstrip("/"))
    options = {"base_url": mirror} if via == "base_url" else {}
    if via == "env":
        monkeypatch.setenv(downloader.MIRROR_ENV, mirror)
    with pytest.raises(DownloadError, match=rf"{re.escape(mirror)}.*not an https URL") as caught:
        downloader.download("mnist", tmp_path / "data", timeout=5, **options)
    assert (downloader.MIRROR_ENV in str(caught.value)) == (via == "env")
    assert requests == []  # nothing was fetched over it


def test_the_official_sources_are_https_and_every_file_is_pinned():
    assert (
        sorted(downloader._SOURCES) == sorted(standard_files.LAYOUTS) == downloader.downloadable()
    )
    for name, source in downloader._SOURCES.items():
        files = standard_files.LAYOUTS[name].files
        assert source.default_url.startswith("https://"), name
        fetched = [source.archive] if source.archive else [f"{file}.gz" for file in files]
        assert sorted(source.pins) == sorted(fetched), name
        for pin in source.pins.values():
            assert re.fullmatch(r"[0-9a-f]{64}", pin.sha256) and pin.size > 0


def test_download_refuses_a_redirect_to_http(tmp_path, serve, tls, monkeypatch):
    make_idx_dataset(tmp_path / "plain", gz=True)
    make_idx_dataset(tmp_path / "mirror", gz=True)
    pin_served(monkeypatch, "mnist", tmp_path / "mirror")
    plain_url, plain_requests = serve(tmp_path / "plain", https=False)
    target = f"{plain_url}train-images-idx3-ubyte.gz"
    url, _ = serve(tmp_path / "mirror", redirects={"/train-images-idx3-ubyte.gz": target})
    with pytest.raises(DownloadError, match=rf"refusing the redirect .* to {re.escape(target)}"):
        downloader.download(
            "mnist", tmp_path / "data", base_url=url, timeout=5, ssl_context=tls.client
        )
    assert plain_requests == []
    assert not list((tmp_path / "data" / "mnist").glob("*train-images*"))


def test_download_follows_a_redirect_to_https(tmp_path, serve, tls, monkeypatch):
    make_idx_dataset(tmp_path / "mirror", gz=True)
    pin_served(monkeypatch, "mnist", tmp_path / "mirror")
    url, requests = serve(tmp_path / "mirror")
    moved = {f"/moved/{name}.gz": f"{url}{name}.gz" for name in IDX_NAMES}
    old_url, _ = serve(tmp_path / "mirror", redirects=moved)
    downloader.download(
        "mnist", tmp_path / "data", base_url=old_url + "moved/", timeout=5, ssl_context=tls.client
    )
    assert sorted(requests) == sorted(f"/{name}.gz" for name in IDX_NAMES)


def test_download_cifar_tarball_extracts_and_removes_it(tmp_path, serve, tls, monkeypatch):
    raw = make_cifar_dataset(tmp_path / "batches")
    make_cifar_tarball(tmp_path / "mirror" / "cifar-10-python.tar.gz", tmp_path / "batches")
    pin_served(monkeypatch, "cifar10", tmp_path / "mirror")
    url, requests = serve(tmp_path / "mirror")
    data_dir = tmp_path / "data"
    paths = downloader.download(
        "cifar10", data_dir, base_url=url, timeout=5, ssl_context=tls.client
    )
    assert paths == [data_dir / "cifar10" / "cifar-10-batches-py" / b for b in CIFAR_BATCHES]
    assert not (data_dir / "cifar10" / "cifar-10-python.tar.gz").exists()
    assert requests == ["/cifar-10-python.tar.gz"]
    dataset = load_dataset("cifar10", data_dir=data_dir)
    assert dataset.y_test.tolist() == raw["y_test"].tolist()

    downloader.download("cifar10", data_dir, base_url=url, timeout=5, ssl_context=tls.client)
    assert len(requests) == 1


def test_download_refuses_a_cifar_tarball_with_the_wrong_digest(tmp_path, serve, tls, monkeypatch):
    make_cifar_dataset(tmp_path / "batches")
    make_cifar_tarball(tmp_path / "mirror" / "cifar-10-python.tar.gz", tmp_path / "batches")
    url, _ = serve(tmp_path / "mirror")  # pinned to the real archive, which this is not
    real = downloader._SOURCES["cifar10"].pins["cifar-10-python.tar.gz"].sha256
    with pytest.raises(DownloadError, match=rf"cifar-10-python.tar.gz.*expected sha256 {real}"):
        downloader.download(
            "cifar10", tmp_path / "data", base_url=url, timeout=5, ssl_context=tls.client
        )
    assert not list((tmp_path / "data" / "cifar10").iterdir())


@pytest.mark.parametrize("member", ["../evil", "cifar-10-batches-py/../../evil", "{tmp}/evil"])
def test_download_rejects_tarball_escaping_the_directory(tmp_path, serve, tls, monkeypatch, member):
    member = member.format(tmp=tmp_path)
    make_cifar_dataset(tmp_path / "batches")
    archive = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    make_cifar_tarball(archive, tmp_path / "batches", extra={member: b"gotcha"})
    pin_served(monkeypatch, "cifar10", tmp_path / "mirror")
    url, _ = serve(tmp_path / "mirror")
    with pytest.raises(ValueError, match=rf"unsafe member {re.escape(repr(member))}"):
        downloader.download(
            "cifar10", tmp_path / "data" / "deep", base_url=url, timeout=5, ssl_context=tls.client
        )
    assert not list(tmp_path.rglob("evil"))
    assert not list((tmp_path / "data").rglob("*.tar.gz"))
    assert not (tmp_path / "data" / "deep" / "cifar10" / "cifar-10-batches-py").exists()


@pytest.mark.parametrize(
    ("name", "first_file", "expected_files"),
    [
        ("mnist", "train-images-idx3-ubyte.gz", IDX_NAMES),
        ("cifar10", "cifar-10-python.tar.gz", [f"cifar-10-batches-py/{b}" for b in CIFAR_BATCHES]),
    ],
)
def test_download_offline_says_what_to_place_by_hand(tmp_path, name, first_file, expected_files):
    url = closed_port_url()
    with pytest.raises(DownloadError) as caught:
        downloader.download(name, tmp_path, base_url=url, timeout=5)
    assert isinstance(caught.value, RuntimeError)
    message = str(caught.value)
    assert f"{url}{first_file}" in message and "offline" in message
    assert f"python -m gradreg data download {name} --dir {tmp_path}" in message
    assert all(str(tmp_path / name / file) in message for file in expected_files)


def test_download_http_error_names_the_url(tmp_path, serve, tls):
    (tmp_path / "empty").mkdir()
    url, _ = serve(tmp_path / "empty")
    with pytest.raises(DownloadError, match=rf"{re.escape(url)}train-images.*404"):
        downloader.download(
            "mnist", tmp_path / "data", base_url=url, timeout=5, ssl_context=tls.client
        )


def test_download_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match=r"no data files known for 'digits'"):
        downloader.download("digits", tmp_path)


def test_cifar_batch_written_by_python2_loads(tmp_path):
    # Python 2 opcodes, as in the published files: 8-bit strings (BINSTRING `T`) and numpy.core
    # names. Holds {"data": one 3072-byte image, "labels": [7]}.
    def string(text: bytes) -> bytes:
        return b"T" + struct.pack("<I", len(text)) + text

    image = np.arange(3072).astype(np.uint8)
    opcodes = [
        b"\x80\x02}(",
        string(b"data"),
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85",
        string(b"b"),
        b"\x87R(K\x01K\x01M\x00\x0c\x86cnumpy\ndtype\n",  # state: version 1, shape (1, 3072)
        string(b"u1"),
        b"K\x00K\x01\x87R(K\x03",
        string(b"|"),
        b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89",
        string(image.tobytes()),
        b"tb",
        string(b"labels"),
        b"](K\x07eu.",
    ]
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"".join(opcodes))
    images, labels = read_cifar_batch(path)
    assert labels.tolist() == [7]
    assert np.array_equal(images.reshape(-1), image)
