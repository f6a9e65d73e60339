"""`mtsc data`: dataset tools. `mtsc data shapes` renders the built-in benchmark to a folder.

The folder then opens with `open_dataset("shapes:DIR", split)`. Nothing here needs torch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mtsc.errors import MtscError

PREVIEW_SAMPLES = 6


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="dataset tools", description="Dataset tools for mtsc."
    )
    datasets = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    shapes = datasets.add_parser(
        "shapes",
        help="render the built-in shapes benchmark (segment, depth, normal)",
        description=(
            "Render the procedural shapes benchmark: primitives on a textured ground, with "
            "exact segmentation, depth and surface normal labels. Writes DIR/{train,val,test}"
            ".npz and DIR/shapes.json."
        ),
    )
    shapes.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    shapes.add_argument("--n-train", type=int, default=2000, metavar="N", help="default 2000")
    shapes.add_argument("--n-val", type=int, default=500, metavar="N", help="default 500")
    shapes.add_argument("--n-test", type=int, default=500, metavar="N", help="default 500")
    shapes.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    shapes.add_argument(
        "--objects", type=int, default=4, metavar="K", help="at most K objects per image (4)"
    )
    shapes.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    shapes.add_argument(
        "--preview",
        type=Path,
        metavar="PNG",
        help="also write a picture of training samples: image | segment | depth | normals",
    )


def run(args: argparse.Namespace) -> int:
    if args.dataset == "shapes":
        return run_shapes(args)
    raise MtscError(None, f"unknown dataset command {args.dataset!r}")


def _check_flags(args: argparse.Namespace) -> None:
    from mtsc.runtime.data.options import (
        SHAPES_MAX_COUNT,
        SHAPES_MAX_OBJECTS,
        SHAPES_MAX_SEED,
        SHAPES_MAX_SIZE,
        SHAPES_MIN_SIZE,
    )

    limits = {
        "--size": (args.size, SHAPES_MIN_SIZE, SHAPES_MAX_SIZE),
        "--objects": (args.objects, 1, SHAPES_MAX_OBJECTS),
        "--n-train": (args.n_train, 0, SHAPES_MAX_COUNT),
        "--n-val": (args.n_val, 0, SHAPES_MAX_COUNT),
        "--n-test": (args.n_test, 0, SHAPES_MAX_COUNT),
        "--seed": (args.seed, 0, SHAPES_MAX_SEED),
    }
    for flag, (value, low, high) in limits.items():
        if not low <= value <= high:
            raise MtscError(None, f"{flag} must be in [{low}, {high}], got {value}")


def _check_preview(path: Path) -> None:
    from mtsc.fsutil import check_output_files

    if path.suffix.lower() != ".png":
        raise MtscError(None, f"cannot write {path}: the preview is a PNG; name a .png file")
    check_output_files([path])  # its folder may be new (inside --out, say): it is made


def run_shapes(args: argparse.Namespace) -> int:
    from mtsc.fsutil import undone_on_failure, write_atomic
    from mtsc.runtime.data.png import encode_png
    from mtsc.runtime.data.preview import shapes_preview
    from mtsc.runtime.data.shapes import SPLITS, ShapesConfig, write_dataset

    _check_flags(args)
    config = ShapesConfig(
        height=args.size,
        width=args.size,
        objects=args.objects,
        seed=args.seed,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
    )
    if args.preview is not None:  # checked before the dataset is written
        _check_preview(args.preview)
    # A preview that cannot be written after all takes the new dataset with it: a failed
    # command leaves no files of its own behind.
    with undone_on_failure(args.out):
        start = time.perf_counter()
        splits = write_dataset(config, args.out)
        seconds = time.perf_counter() - start
        if args.preview is not None:
            png = encode_png(shapes_preview(splits["train"], PREVIEW_SAMPLES))
            with undone_on_failure(args.preview.parent):
                write_atomic(args.preview, png)
    counts = ", ".join(f"{config.count(s)} {s}" for s in SPLITS)
    print(f"wrote {counts} images ({args.size}x{args.size}) to {args.out} in {seconds:.1f} s")
    if args.preview is not None:
        print(f"wrote preview {args.preview}")
    return 0
