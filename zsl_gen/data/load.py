"""``load_raw``: read a dataset directory in whichever supported format it is."""

from __future__ import annotations

from pathlib import Path

from zsl_gen.data.byo import BYO_FILES, load_byo
from zsl_gen.data.download import DATASETS
from zsl_gen.data.types import RawDataset
from zsl_gen.data.xlsa17 import load_xlsa17
from zsl_gen.errors import DataError


def detect_format(data_dir: str | Path, *, features_file: str = "res101.mat",
                  semantics_file: str = "att_splits.mat") -> str | None:
    """``"byo"`` when ``features.npy`` is present, ``"xlsa17"`` when either ``.mat`` file is, else None; a
    directory holding the features of both formats is a ``DataError`` (which one a run reads would be a guess)."""
    root = Path(data_dir)
    if (root / "features.npy").is_file():
        if (root / features_file).is_file():
            raise DataError(f"{root} holds the features of both dataset formats, features.npy (bring-your-own) and "
                            f"{features_file} (xlsa17), so which one a run reads would be a guess: move one set of "
                            "files into a directory of its own")
        return "byo"
    if (root / features_file).is_file() or (root / semantics_file).is_file():
        return "xlsa17"
    return None


def load_raw(
    data_dir: str | Path,
    *,
    name: str | None,
    features_file: str = "res101.mat",
    semantics_file: str = "att_splits.mat",
    semantic_key: str = "att",
    semantic_space: str | None = None,
    seed: int = 0,
) -> RawDataset:
    """Load an xlsa17 or bring-your-own dataset directory, detected by its files.

    Args:
        data_dir: the dataset directory.
        name: dataset name; None: a bring-your-own directory's own (``splits.json``'s ``"name"``, else the
            directory's), an xlsa17 directory's name.
        features_file, semantics_file, semantic_key, semantic_space: as in ``load_xlsa17``.
        seed: seed of the BYO test_seen hold-out (class-name ``splits.json`` only).

    Returns:
        A validated ``RawDataset``. An explicit ``semantic_space`` that the dataset's own record (the
        ``semantic_space`` key of ``splits.json`` or of the ``.mat`` file) contradicts is a ``DataError``.
    """
    root = Path(data_dir)
    fmt = detect_format(root, features_file=features_file, semantics_file=semantics_file)
    if fmt == "byo":
        return load_byo(root, name=name, seed=seed, semantic_space=semantic_space)
    name = name or root.resolve().name
    if fmt == "xlsa17":
        return load_xlsa17(root, name=name, features_file=features_file, semantics_file=semantics_file,
                           semantic_key=semantic_key, semantic_space=semantic_space)
    hint = ""
    if (root / name).is_dir() and detect_format(root / name, features_file=features_file,
                                                semantics_file=semantics_file):
        hint = f" (a dataset is in {root / name}: did you mean that directory?)"
    missing = " (the directory does not exist)" if not root.exists() else ""
    raise DataError(
        f"no dataset found for {name} in {root}{missing}: looked for an xlsa17 dataset ({features_file} + "
        f"{semantics_file}) and a bring-your-own dataset ({', '.join(BYO_FILES)}){hint}; "
        + _download_hint(name, root, semantics_file)
        + "or convert your own data to the bring-your-own format (see zsl_gen.data.byo)"
    )


def _download_hint(name: str, root: Path, semantics_file: str) -> str:
    """The ``zsl-data download`` commands that put a benchmark's files into ``root`` (it lands in
    ``<dir>/<DATASET>``: only a ``root`` named so can be filled in place)."""
    if name not in DATASETS:
        return "place the files there, "
    names = [name] + (["CUB_SENT"] if name == "CUB" and Path(semantics_file).name == "sent_splits.mat" else [])
    target = DATASETS[name].target
    commands = " and ".join(f"`zsl-data download {n} --dir {root.parent if root.name == target else '<dir>'}`"
                            for n in names)
    where = "" if root.name == target else f" and set data_dir=<dir>/{target}"
    return f"download it with {commands}{where}, place the files there by hand, "
