"""``zsl-synthesize``: features for any class vectors from an exported generator — no training.

    zsl-synthesize generator=outputs/train/runs/<run>/generator semantics=new_classes.csv \\
        n_per_class=300 out=synthetic_features [seed=0] [space=raw|scaled] [semantic_key=att]

``semantics`` is one of: a ``.csv`` (``name,v1,...,vA`` per line), a ``.npy`` ``(K, A)`` array (with
``classes.txt`` beside it for names), an xlsa17 ``.mat`` (``att`` is ``A × K``, names from
``allclasses_names``), or a bring-your-own dataset directory (``semantics.npy`` + ``classes.txt``).
Vectors are given raw; the generator applies its training preprocessing (e.g. L2 normalisation).

``out`` becomes a directory in the bring-your-own file formats: ``features.npy`` ``(K·n, D)``,
``labels.npy`` ``(K·n,)``, ``semantics.npy`` ``(K, A)``, ``classes.txt``, and ``synthesis.json``
(provenance). Add a ``splits.json`` (or merge with real data) to use it as a dataset.
``space=raw`` (default) maps features back to the dataset's original scale, like real features.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from zsl_gen.cli.common import check_output_path, exit_on_sigterm, report_user_errors
from zsl_gen.data._io import move_into_place, sha256_file, temp_dir_beside
from zsl_gen.data.byo import load_npy, read_class_names
from zsl_gen.data.validate import check_unique_names
from zsl_gen.data.xlsa17 import default_class_names
from zsl_gen.errors import ConfigError, DataError

USAGE = ("usage: zsl-synthesize generator=<export dir> semantics=<file> n_per_class=<N> out=<dir> "
         "[seed=0] [space=raw|scaled] [semantic_key=att] [device=cpu]")
KEYS = {"generator": None, "semantics": None, "n_per_class": None, "out": None, "seed": "0", "space": "raw",
        "semantic_key": "att", "device": "cpu"}


def parse_overrides(argv: list[str], keys: dict[str, str | None]) -> dict[str, str]:
    """``key=value`` arguments → dict; unknown or missing keys are a ConfigError naming them."""
    values: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in keys:
            raise ConfigError(f"unexpected argument {arg!r} ({USAGE})")
        values[key] = value
    missing = [k for k, default in keys.items() if default is None and k not in values]
    if missing:
        raise ConfigError(f"missing {', '.join(k + '=' for k in missing)} ({USAGE})")
    return {**{k: v for k, v in keys.items() if v is not None}, **values}


def read_class_semantics(path: Path, semantic_key: str = "att") -> tuple[list[str], np.ndarray]:
    """Class names and a ``(K, A)`` float32 matrix from a semantics file or BYO directory: at least one class,
    names distinct and non-empty (the output's ``classes.txt`` must load as a bring-your-own dataset)."""
    try:
        names, matrix = _read_class_semantics(path, semantic_key)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    if len(names) == 0:
        raise DataError(f"{path}: no classes in it; give at least one class vector")
    bad = [names[i] if i < len(names) else str(i) for i in np.flatnonzero(~np.isfinite(matrix).all(axis=1))]
    if bad:
        raise DataError(f"{path}: the vectors of {len(bad)} classes hold NaN or Inf ({', '.join(map(repr, bad[:5]))}); "
                        "fix those class vectors")
    empty = [i for i, name in enumerate(names) if not name.strip()]
    if empty:
        raise DataError(f"{path}: class {empty[0] + 1} has an empty name; name every class")
    check_unique_names(names, str(path))
    return names, matrix


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# first cells of a header line whose other cells are column numbers
HEADER_LABELS = frozenset({"", "name", "names", "class", "classes", "class_name", "classname", "label"})


def _read_class_semantics(path: Path, semantic_key: str) -> tuple[list[str], np.ndarray]:
    if not path.exists():
        raise DataError(f"{path}: no such semantics file (give a .csv, .npy, .mat or a dataset directory)")
    if path.is_dir():
        names_file, matrix = path / "classes.txt", _load_npy(path / "semantics.npy")
    elif path.suffix == ".npy":
        names_file, matrix = path.with_name("classes.txt"), _load_npy(path)
    elif path.suffix == ".csv":
        names, rows = [], []
        for line_no, cells in _csv_rows(path):
            line = ",".join(cells)
            if not line.strip():
                continue
            name, *values = [c.strip() for c in cells]
            if not values:
                raise DataError(f"{path}:{line_no}: no values after the class name; expected `name,v1,...,vA`, "
                                f"comma-separated, got {line[:60]!r}")
            try:
                row = [float(v) for v in values]
            except ValueError:
                if not names and not rows and not any(_is_number(v) for v in values):
                    continue  # a header line (`name,v1,...`)
                raise DataError(f"{path}:{line_no}: expected `name,v1,...,vA` with numbers, got {line[:60]!r}") from None
            if not names and len(row) > 1 and (name.lower() in HEADER_LABELS or len(row) >= 8) and row in (
                    list(range(len(row))), list(range(1, len(row) + 1))):
                continue  # a header of column numbers (pandas' to_csv of a plain matrix: `name,0,1,...` or `,0,1,...`)
            rows.append(row)
            names.append(name)
        if not rows:
            raise DataError(f"{path}: no class in it; give one line `name,v1,...,vA` per class")
        if len({len(r) for r in rows}) != 1:
            raise DataError(f"{path}: every line must be `name,v1,...,vA` with the same number of values")
        return names, np.asarray(rows, dtype=np.float32)
    elif path.suffix == ".mat":
        from zsl_gen.data.xlsa17 import MatFile, string_list

        mat = MatFile(path, [semantic_key, "allclasses_names"])
        if semantic_key not in mat:
            raise DataError(f"{path}: no key {semantic_key!r} (keys: {', '.join(sorted(mat.keys()))}); "
                            "pass semantic_key=<key>")
        matrix = np.asarray(mat.get(semantic_key), dtype=np.float32).T  # xlsa17 stores A × C
        names = (string_list(mat.get("allclasses_names")) if "allclasses_names" in mat
                 else default_class_names(matrix.shape[0]))
        return names, matrix
    else:
        raise DataError(f"{path}: unsupported semantics file type {path.suffix!r} (use .csv, .npy, .mat or a "
                        "dataset directory)")
    if names_file.is_file():
        names = read_class_names(names_file)  # as a bring-your-own dataset's: stripped, trailing blank lines dropped
    else:
        names = default_class_names(len(matrix))
    if len(names) != len(matrix):
        raise DataError(f"{names_file}: {len(names)} class names for {len(matrix)} semantic rows")
    return names, matrix


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of each record of a CSV file: quoted cells (R's write.csv, Python's QUOTE_NONNUMERIC)
    lose their quotes and may hold commas."""
    reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline=""))
    try:
        return [(reader.line_num, cells) for cells in reader]
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({err}); expected `name,v1,...,vA` per line") from None


def _load_npy(path: Path) -> np.ndarray:
    matrix = load_npy(path, "semantics file (K, A)", "save the class vectors with numpy.save as a (K, A) array of "
                      "real numbers")
    if matrix.ndim != 2:
        raise DataError(f"{path}: expected a (K, A) matrix, got shape {matrix.shape}")
    return matrix.astype(np.float32)


OUTPUT_FILES = frozenset({"features.npy", "labels.npy", "semantics.npy", "classes.txt", "synthesis.json"})


def check_output_dir(out: Path) -> None:
    """``out`` must be new, empty, or an earlier zsl-synthesize output (which is then replaced): never a
    directory holding anything else, and never the working directory or one above it."""
    if out.is_symlink():  # replacing it would replace the link, not the directory it points to
        raise ConfigError(f"out={out}: is a symbolic link; give the directory it points to ({out.resolve()}) or a "
                          "new directory")
    check_output_path(out, "out=", directory=True)
    if not out.exists():
        return
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise ConfigError(f"out={out}: is the working directory or holds it; give a new directory, e.g. "
                          "out=synthetic")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_FILES)
    if foreign or (any(out.iterdir()) and not (out / "synthesis.json").is_file()):
        shown = ", ".join(foreign[:3]) or "files without synthesis.json"
        raise ConfigError(f"out={out}: exists and is not an earlier zsl-synthesize output (it holds {shown}), "
                          "which replacing it would delete; give a new directory or remove it first")


def write_synthesis(out: Path, features: np.ndarray, labels: np.ndarray, semantics: np.ndarray,
                    names: list[str], provenance: dict) -> None:
    """Write the output directory atomically (a temp dir renamed into place); ``out`` must have passed
    ``check_output_dir``: an existing one is replaced (checked again first: files put there while the
    features were synthesized are not deleted), by renames only, so that an interruption leaves the earlier
    output or the new one, never a half-deleted mix."""
    tmp = temp_dir_beside(out)
    try:
        try:
            np.save(tmp / "features.npy", features)
            np.save(tmp / "labels.npy", labels)
            np.save(tmp / "semantics.npy", semantics)
            (tmp / "classes.txt").write_text("\n".join(names) + "\n")
            (tmp / "synthesis.json").write_text(json.dumps(provenance, indent=2) + "\n")
        except OSError as err:  # a full disk, a file-size limit: numpy's short-write error names no file
            raise DataError(f"out={out}: writing the output failed ({err.strerror or err}); check the free space "
                            "and file-size limits of its file system, or give out= elsewhere; nothing was "
                            "written there") from None
        if out.exists():
            check_output_dir(out)
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@report_user_errors
@exit_on_sigterm
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    args = parse_overrides(argv, KEYS)
    try:
        n_per_class, seed = int(args["n_per_class"]), int(args["seed"])
    except ValueError:
        raise ConfigError(f"n_per_class and seed must be integers, got {args['n_per_class']!r}, {args['seed']!r}") from None
    if n_per_class < 1:
        raise ConfigError(f"n_per_class must be >= 1, got {n_per_class}")
    if not 0 <= seed < 2**63:
        raise ConfigError(f"seed must be an integer in [0, 2**63), got {seed}")
    from zsl_gen.config import check_torch_device
    from zsl_gen.export import load_generator

    check_torch_device(args["device"])
    check_output_dir(Path(args["out"]))
    generator = load_generator(args["generator"], device=args["device"])
    names, semantics = read_class_semantics(Path(args["semantics"]), args["semantic_key"])
    if semantics.shape[1] != generator.meta["semantic_dim"]:
        raise DataError(f"{args['semantics']}: {semantics.shape[1]}-d class vectors, but the generator expects "
                        f"{generator.meta['semantic_dim']}-d ones (trained on {generator.meta['dataset']}, "
                        f"{generator.meta['semantic_space']}); give vectors of that semantic space")
    features = generator.synthesize(semantics, n_per_class, seed, space=args["space"]).numpy()
    labels = np.repeat(np.arange(len(names)), n_per_class)
    out = Path(args["out"])
    from zsl_gen.results import utc_now, versions

    source = Path(args["semantics"])
    source_file = source / "semantics.npy" if source.is_dir() else source
    write_synthesis(out, features, labels, semantics, names, {
        "created": utc_now(), "generator": str(Path(args["generator"]).resolve()),
        "generator_weights_sha256": generator.meta["weights_sha256"], "trained_on": generator.meta["dataset"],
        "method": generator.meta.get("method", generator.meta["_target_"]),
        "semantic_space": generator.meta.get("semantic_space"),
        "semantics_file": str(source.resolve()), "semantics_sha256": sha256_file(source_file),
        "n_per_class": n_per_class, "seed": seed, "space": args["space"], "device": args["device"],
        "classes": names, "versions": versions()})
    print(f"{len(names)} classes × {n_per_class} = {len(labels)} features ({features.shape[1]}-d, "
          f"{args['space']} space) → {out}")


if __name__ == "__main__":
    main()
