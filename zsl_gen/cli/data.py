"""``zsl-data``: download, simulate, convert and inspect datasets.

Usage::

    zsl-data download <DATASET> [--dir DIR] [--url URL]
    zsl-data simulate --att-splits PATH --out DIR [--feature-dim 2048] [--seed 0]
    zsl-data convert <SRC_DIR> <DST_DIR> [--to byo|xlsa17]
    zsl-data info <DIR> [--semantics-file att_splits.mat]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from zsl_gen.cli.common import check_output_path, exit_on_sigterm, report_user_errors
from zsl_gen.data import (
    RawDataset,
    download_dataset,
    load_byo,
    load_raw,
    save_byo,
    save_xlsa17,
    simulate_features_for,
    write_res101,
)
from zsl_gen.data._io import atomic_write, files_as_one_set, sha256_file
from zsl_gen.data.byo import BYO_FILES
from zsl_gen.data.download import DATASETS
from zsl_gen.data.load import detect_format
from zsl_gen.data.types import OPTIONAL_LOCS, REQUIRED_LOCS
from zsl_gen.errors import ConfigError, DataError


def _default_data_dir() -> str:
    return os.environ.get("ZSL_DATA_DIR", "data")


def _add_file_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="dataset name (default: the directory name)")
    p.add_argument("--features-file", default="res101.mat", help="xlsa17 features file (default: res101.mat)")
    p.add_argument("--semantics-file", default="att_splits.mat",
                   help="xlsa17 semantics/splits file, e.g. sent_splits.mat (default: att_splits.mat)")
    p.add_argument("--semantic-key", default="att", help="key of the semantic matrix (default: att)")
    p.add_argument("--semantic-space", default=None,
                   help="what the semantics are, e.g. att or sent (default: the dataset's own record, else inferred "
                        "from the file name: sent_splits.mat and FLO are sent); convert records it")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zsl-data", description="Download, simulate, convert and inspect "
                                     "GZSL datasets (xlsa17 .mat files or the bring-your-own format).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("download", help="download, extract and verify a benchmark dataset")
    p.add_argument("dataset", metavar="DATASET", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--dir", default=None, help="destination directory (default: $ZSL_DATA_DIR or ./data); "
                   "the dataset lands in DIR/<DATASET>")
    p.add_argument("--url", default=None, help="mirror: a full .zip URL or a base URL for the archive")
    p.add_argument("--timeout", type=float, default=30, help="socket timeout in seconds (default: 30)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--remove-archive", action="store_true", help="delete the archive after extraction")

    p = sub.add_parser("simulate", help="write simulated res101.mat features for a real att_splits.mat")
    p.add_argument("--att-splits", required=True, type=Path, metavar="PATH",
                   help="an xlsa17 att_splits.mat (or sent_splits.mat)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output dataset directory")
    p.add_argument("--feature-dim", type=int, default=2048, help="feature dimension (default: 2048)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default: 0)")
    p.add_argument("--force", action="store_true", help="overwrite an existing DIR/res101.mat")

    p = sub.add_parser("convert", help="convert between the xlsa17 and bring-your-own formats")
    p.add_argument("src", type=Path, metavar="SRC_DIR")
    p.add_argument("dst", type=Path, metavar="DST_DIR")
    p.add_argument("--to", choices=("byo", "xlsa17"), default=None,
                   help="target format (default: the other one)")
    p.add_argument("--force", action="store_true", help="overwrite existing dataset files in DST_DIR")
    _add_file_options(p)

    p = sub.add_parser("info", help="validate a dataset directory and print a summary")
    p.add_argument("dir", type=Path, metavar="DIR")
    _add_file_options(p)
    return parser


def _short(digest: str) -> str:
    return digest[:16] + "…"


def summary(raw: RawDataset, *, checksums: bool = True) -> str:
    """A short human summary of a dataset: classes, split sizes, dimensions, checksums."""
    val_classes = np.unique(raw.labels[raw.locs["val"]]) if "val" in raw.locs else np.zeros(0)
    n_seen, n_unseen = len(raw.seen_classes), len(raw.unseen_classes)
    splits = ", ".join(f"{k} {raw.locs[k].size}" for k in REQUIRED_LOCS + OPTIONAL_LOCS if k in raw.locs)
    lines = [
        f"dataset {raw.name}: {raw.n_classes} classes (seen {n_seen}, unseen {n_unseen}, "
        f"val {val_classes.size if 'val' in raw.locs else 'n/a'})",
        f"  samples {raw.features.shape[0]}, features {raw.features.shape[1]}-d "
        f"(min {float(raw.features.min()):.4g}, max {float(raw.features.max()):.4g}), "
        f"semantics {raw.semantics.shape[1]}-d ({raw.semantic_space})",
        f"  splits: {splits}" + ("" if "val" in raw.locs else " (no train/val: split=val unavailable)"),
    ]
    if raw.features_note:
        lines.append(f"  features: {raw.features_note}")
    if checksums:
        lines += [f"  sha256 {_short(h)}  {p}" for p, h in raw.files.items()]
    return "\n".join(lines)


def _download(args) -> None:
    dest = Path(args.dir or _default_data_dir())
    target = download_dataset(args.dataset, dest, url=args.url, progress=not args.no_progress,
                              timeout=args.timeout, keep_archive=not args.remove_archive)
    files = sorted(p.name for p in target.iterdir() if p.is_file())
    print(f"{args.dataset}: {target} ({', '.join(files)})")


def _simulate(args) -> None:
    src = args.att_splits
    out = args.out
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    _check_output_dir(out, "--out")
    res = out / "res101.mat"
    if res.exists() and not args.force:
        raise DataError(f"{res} already exists; pass --force to overwrite it with simulated features, or "
                        "choose another --out directory")
    dst = out / src.name
    if dst.exists() and dst.resolve() != src.resolve() and not args.force and \
            (not dst.is_file() or not src.is_file() or sha256_file(dst) != sha256_file(src)):
        raise DataError(f"{dst} already exists and differs from {src}; pass --force to overwrite it, or choose "
                        "another --out directory")
    _refuse_other_format(out, ("features.npy",), "--out")
    raw = simulate_features_for(src, feature_dim=args.feature_dim, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    with files_as_one_set():  # features and the semantics they were simulated from: both or neither
        write_res101(raw, res, note=f"simulated features (zsl-data simulate, seed {args.seed}, "
                                    f"{raw.features.shape[1]}-d), not real image features")
        if not dst.exists() or dst.resolve() != src.resolve():
            with open(src, "rb") as fin:
                atomic_write(dst, lambda fh: shutil.copyfileobj(fin, fh))
    print(f"wrote simulated {res} ({raw.features.shape[0]} samples × {raw.features.shape[1]}-d, seed "
          f"{args.seed}) and {dst}")
    print(summary(raw, checksums=False))


def _check_output_dir(path: Path, what: str) -> None:
    check_output_path(path, what, directory=True)


def _refuse_other_format(dst: Path, others: tuple[str, ...], what: str) -> None:
    """A dataset directory holds one format: files written beside the other format's features (``others``)
    would leave a directory that no run could read without guessing (``detect_format`` refuses it)."""
    for name in others:
        if (dst / name).exists():
            raise DataError(f"{what} {dst} already holds a dataset of the other format ({dst / name}); write into "
                            "another directory (--force replaces only files of the same format)")


def _load(args, path: Path) -> RawDataset:
    raw = _read(args, path)
    if args.semantic_space is not None:  # said by the user: it replaces the dataset's own record
        if not args.semantic_space.strip():
            raise ConfigError("--semantic-space must be a non-empty name such as att or sent")
        raw.semantic_space = args.semantic_space
    return raw


def _read(args, path: Path) -> RawDataset:
    if detect_format(path, features_file=args.features_file, semantics_file=args.semantics_file) == "byo":
        return load_byo(path, name=args.name)  # the name recorded in splits.json, unless --name
    return load_raw(path, name=args.name or path.resolve().name, features_file=args.features_file,
                    semantics_file=args.semantics_file, semantic_key=args.semantic_key)


def _convert(args) -> None:
    fmt = detect_format(args.src, features_file=args.features_file, semantics_file=args.semantics_file)
    _check_output_dir(args.dst, "the destination")
    if args.dst.resolve() == args.src.resolve():
        raise ConfigError(f"{args.dst}: the destination is the source directory; convert into another directory")
    to = args.to or ("xlsa17" if fmt == "byo" else "byo")
    if to == "xlsa17" and args.features_file == args.semantics_file:
        raise ConfigError(f"--features-file and --semantics-file are both {args.features_file}: the xlsa17 format "
                          "writes two files; give them two names")
    outputs = BYO_FILES if to == "byo" else (args.features_file, args.semantics_file)
    _refuse_other_format(args.dst, (args.features_file, "res101.mat") if to == "byo" else ("features.npy",),
                         "the destination")
    folders = [f for f in outputs if (args.dst / f).is_dir()]
    if folders:
        raise DataError(f"{args.dst / folders[0]} is a directory, where the {to} file {folders[0]} would go; "
                        "choose another destination")
    existing = [f for f in outputs if (args.dst / f).exists()]
    if existing and not args.force:
        raise DataError(f"{args.dst} already holds {', '.join(existing)}; pass --force to overwrite, or "
                        "choose another destination")
    raw = _load(args, args.src)
    if to == "byo":
        save_byo(raw, args.dst)
    else:
        save_xlsa17(raw, args.dst, features_file=args.features_file, semantics_file=args.semantics_file,
                    semantic_key=args.semantic_key)
    print(f"converted {args.src} ({fmt}) -> {args.dst} ({to}): {', '.join(outputs)}")
    print(summary(raw, checksums=False))


def _info(args) -> None:
    fmt = detect_format(args.dir, features_file=args.features_file, semantics_file=args.semantics_file)
    raw = _load(args, args.dir)
    print(f"{args.dir} ({fmt} format): valid")
    print(summary(raw))


@report_user_errors
@exit_on_sigterm
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``zsl-data``; user errors exit with status 2 and a one-line message."""
    args = _parser().parse_args(argv)
    {"download": _download, "simulate": _simulate, "convert": _convert, "info": _info}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
