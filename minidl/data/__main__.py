"""``python -m minidl.data mnist [--root DIR]``: prepare a dataset and say
where it is, where each file came from and its SHA-256."""
from __future__ import annotations

import argparse
import sys

import numpy as np

from .files import DataError, default_root
from .mnist import MNIST, FashionMNIST, _idx_sha256

DATASETS = {"mnist": MNIST, "fashion-mnist": FashionMNIST}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minidl.data", description=__doc__)
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--root", default=None,
                        help=f"data folder (default: $MINIDL_DATA or {default_root()})")
    parser.add_argument("--no-download", action="store_true",
                        help="use local files and offline packages only")
    args = parser.parse_args(argv)
    cls = DATASETS[args.dataset]
    try:
        splits = [cls(args.root, train=t, download=not args.no_download) for t in (True, False)]
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{cls.name} is ready in {splits[0].directory}")
    for ds in splits:
        counts = np.bincount(ds.labels, minlength=len(cls.classes))
        print(f"{'train' if ds.train else 'test'}: {len(ds)} images "
              f"{ds.images.dtype}{tuple(ds.images.shape[1:])}, per class {counts.tolist()}")
        for name, array in zip(ds.sources, (ds.images, ds.labels.astype(np.uint8))):
            digest = _idx_sha256(array)
            known = cls.files[name][1]
            mark = ("verified" if digest == known else "MISMATCH" if known is not None
                    else "no pinned hash for the uncompressed file")
            print(f"  {name}  sha256 {digest} ({mark})\n    from {ds.sources[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
