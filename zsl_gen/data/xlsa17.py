"""Reader and writers of the xlsa17 ``.mat`` format (Xian et al., "proposed splits").

A dataset directory holds two MATLAB files:

- ``res101.mat``: ``features`` (D × N, one column per image), ``labels`` (N × 1, 1-based class ids in
  ``allclasses_names`` order), ``image_files`` (N × 1 cell).
- ``att_splits.mat`` (or ``sent_splits.mat``): ``att`` (A × C, one column per class), optional
  ``original_att`` and ``allclasses_names`` (C × 1 cell), and 1-based row indices into ``res101.mat``:
  ``trainval_loc``, ``test_seen_loc``, ``test_unseen_loc`` (required), ``train_loc``, ``val_loc``
  (optional).

Both MATLAB v5/v7 files (``scipy.io.loadmat``) and v7.3 files (HDF5, read with ``h5py``; HDF5 stores
every array transposed and cell arrays as object references) are read.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, Iterable

import h5py
import numpy as np
import scipy.io
import scipy.sparse

from zsl_gen.data._io import atomic_write, sha256_file
from zsl_gen.data.types import OPTIONAL_LOCS, REQUIRED_LOCS, RawDataset
from zsl_gen.data.validate import (Origin, check_semantic_space, require_file, require_keys, unreadable,
                                   validate_raw)
from zsl_gen.errors import DataError

FEATURE_KEYS = ("features", "labels")
NOTE_KEY = "simulated"  # a string zsl-data simulate adds to the res101.mat it writes (other readers ignore it)
_GET_FILES = (
    "download them with `zsl-data download <DATASET> --dir <DIR>`, or write simulated stand-in features "
    "with `zsl-data simulate --att-splits <att_splits.mat> --out <DIR>`"
)


class MatFile:
    """Read access to the variables of one ``.mat`` file of any version, in MATLAB orientation.

    ``get(key)`` returns numeric arrays with MATLAB's shape (e.g. ``features`` as D × N), cell arrays
    as numpy object arrays and char arrays as ``str``.
    """

    def __init__(self, path: Path, wanted: Iterable[str]):
        self.path = path
        self._values: dict[str, Any] = {}
        self._keys: list[str] | None = None
        wanted = list(dict.fromkeys(wanted))
        try:
            if h5py.is_hdf5(str(path)):
                self._read_hdf5(wanted)
            else:
                data = scipy.io.loadmat(str(path), variable_names=wanted)
                self._values = {k: v for k, v in data.items() if not k.startswith("__")}
        except DataError:
            raise
        except PermissionError:
            raise unreadable(path) from None
        except Exception as err:  # scipy/h5py raise many types for corrupt or foreign files
            raise DataError(
                f"cannot read {path} as a MATLAB .mat file ({type(err).__name__}: {err}); the file is "
                "corrupt or not a .mat file: re-download it or re-save it from MATLAB/scipy"
            ) from err

    def keys(self) -> list[str]:
        """All variable names of the file (listed lazily: only needed for error messages)."""
        if self._keys is None:
            try:
                if h5py.is_hdf5(str(self.path)):
                    with h5py.File(self.path, "r") as f:
                        self._keys = [k for k in f.keys() if not k.startswith("#")]
                else:
                    self._keys = [name for name, _, _ in scipy.io.whosmat(str(self.path))]
            except Exception:
                self._keys = list(self._values)
        return self._keys

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def get(self, key: str) -> Any:
        return self._values[key]

    def _read_hdf5(self, wanted: list[str]) -> None:
        with h5py.File(self.path, "r") as f:
            for key in wanted:
                if key in f and isinstance(f[key], h5py.Dataset):
                    self._values[key] = _h5_value(f, f[key])


def _h5_attr_str(obj, name: str) -> str:
    v = obj.attrs.get(name, b"")
    if isinstance(v, bytes):
        return v.decode("ascii", "replace")
    if isinstance(v, np.ndarray):
        return v.tobytes().decode("ascii", "replace")
    return str(v)


def _h5_value(f: h5py.File, ds: h5py.Dataset) -> Any:
    """One MATLAB v7.3 variable in MATLAB orientation (HDF5 holds the transpose)."""
    cls = _h5_attr_str(ds, "MATLAB_class")
    empty = bool(np.asarray(ds.attrs.get("MATLAB_empty", 0)).any())
    if cls == "char":
        if empty:
            return ""
        codes = np.asarray(ds[()]).T
        if codes.ndim < 2 or codes.shape[0] == 1:
            return "".join(chr(int(c)) for c in codes.ravel())
        return np.array(["".join(chr(int(c)) for c in row).rstrip() for row in codes], dtype=object)
    if empty:
        return np.zeros((0,))
    data = ds[()]
    if h5py.check_dtype(ref=ds.dtype) is not None:
        refs = np.asarray(data)
        out = np.empty(refs.shape, dtype=object)
        for idx in np.ndindex(refs.shape):
            out[idx] = _h5_value(f, f[refs[idx]])
        return out.T
    arr = np.asarray(data)
    return arr.T if arr.ndim >= 2 else arr


def string_list(value: Any) -> list[str]:
    """Strings of a MATLAB cell array / char matrix as read by scipy or h5py, in order."""
    if isinstance(value, bytes):
        return [value.decode("utf-8", "replace")]
    if isinstance(value, str):
        return [value]
    arr = np.asarray(value)
    if arr.dtype.kind in "US":
        return [(x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)).rstrip()
                for x in arr.ravel()]
    out = []
    for item in arr.ravel(order="F"):
        parts = string_list(item)
        if len(parts) > 1 and all(len(p) <= 1 for p in parts):
            parts = ["".join(parts)]
        out.append(parts[0] if parts else "")
    return out


def _numeric(value: Any, where: str) -> np.ndarray:
    if scipy.sparse.issparse(value):
        value = value.toarray()
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{where} must be a numeric array, got {arr.dtype} data; "
                        "store it as a numeric matrix")
    return arr


def index_vector(value: Any, where: str) -> np.ndarray:
    """A 1-based MATLAB vector (any orientation or singleton shape) as a 1-d int64 array."""
    arr = _numeric(value, where)
    if arr.ndim > 1:
        arr = arr.squeeze()
    arr = arr.reshape(-1) if arr.ndim == 0 else arr
    if arr.ndim != 1:
        raise DataError(f"{where} must be a vector (n × 1), got shape {np.shape(value)}; "
                        "store a column vector")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise DataError(f"{where} must hold whole numbers (indices/class ids); it has non-integer values")
    return arr.astype(np.int64)


def feature_matrix(value: Any, n_labels: int, where: str) -> np.ndarray:
    """Features as ``(N, D)`` float32, from the xlsa17 D × N layout or an unambiguous N × D one."""
    arr = _numeric(value, where)
    if arr.ndim > 2:
        arr = arr.squeeze()
    if arr.ndim == 1:
        arr = arr.reshape(1, -1) if n_labels == 1 else arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise DataError(f"{where} must be a 2-d matrix (D × N), got shape {np.shape(value)}")
    d0, d1 = arr.shape
    if d1 == n_labels:
        arr = arr.T  # the xlsa17 layout (D × N), also chosen when D == N
    elif d0 != n_labels:
        raise DataError(
            f"{where} has shape {d0}×{d1} but the labels have {n_labels} entries: the number of samples "
            "(columns, D × N) must equal the number of labels; use features and labels of the same file"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def semantic_matrix(value: Any, n_names: int | None, max_label: int, where: str) -> np.ndarray:
    """Semantics as ``(C, A)`` float32 from the xlsa17 A × C layout (C × A accepted when unambiguous)."""
    arr = _numeric(value, where)
    if arr.ndim > 2:
        arr = arr.squeeze()
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise DataError(f"{where} must be a 2-d matrix (A × C), got shape {np.shape(value)}")
    a, c = arr.shape
    if n_names is not None:
        c_by_rows = a == n_names and c != n_names
    else:
        if a == max_label and c > max_label:
            # C × A with A > C (102 classes × 1024-d), or A × C with classes past the last label: cannot tell
            raise DataError(f"{where} is {a}×{c} and the labels name {max_label} classes: it may be {a} classes × "
                            f"{c} dimensions or {a} dimensions × {c} classes; add the class names "
                            "('allclasses_names', one per class) so the orientation is known, or store it as "
                            "xlsa17 does (dimensions × classes) with every class labelled")
        c_by_rows = a == max_label and c < max_label
    if c_by_rows:
        return np.ascontiguousarray(arr, dtype=np.float32)
    return np.ascontiguousarray(arr.T, dtype=np.float32)


def load_xlsa17(
    data_dir: str | Path,
    *,
    name: str,
    features_file: str = "res101.mat",
    semantics_file: str = "att_splits.mat",
    semantic_key: str = "att",
    semantic_space: str | None = None,
) -> RawDataset:
    """Read an xlsa17 dataset directory (MATLAB v5/v7 or v7.3/HDF5 files).

    Args:
        data_dir: directory with ``features_file`` and ``semantics_file``.
        name: dataset name, e.g. ``"CUB"``.
        features_file: file with ``features`` (D × N) and ``labels`` (N × 1, 1-based).
        semantics_file: file with the semantic matrix (A × C) and the ``*_loc`` split indices.
        semantic_key: key of the semantic matrix, ``"att"`` in every release (also for sentences).
        semantic_space: label of the semantic space; default: the file's ``semantic_space`` key if it
            has one, else ``"sent"`` when the file name or key contains "sent" or the dataset is FLO, else
            ``"att"``.

    Returns:
        A validated 0-based ``RawDataset``: ``features (N, D)`` float32, ``labels (N,)``,
        ``semantics (C, A)`` float32, ``locs`` 0-based, ``files`` path -> sha256.
    """
    data_dir = Path(data_dir)
    fpath, spath = data_dir / features_file, data_dir / semantics_file
    require_file(fpath, f"features file '{features_file}' of dataset {name}", _GET_FILES)
    get = ("the CUB sentence embeddings ship apart: download them with `zsl-data download CUB_SENT --dir <DIR>` "
           "(the file lands beside CUB's res101.mat)" if Path(semantics_file).name == "sent_splits.mat"
           else "it ships with the dataset (xlsa17 release): " + _GET_FILES)
    require_file(spath, f"semantics/splits file '{semantics_file}' of dataset {name}", get)

    loc_keys = [f"{n}_loc" for n in REQUIRED_LOCS + OPTIONAL_LOCS]
    sem_keys = [semantic_key, *loc_keys, "allclasses_names", "semantic_space"]
    if spath.resolve() == fpath.resolve():
        fmat = smat = MatFile(fpath, [*FEATURE_KEYS, NOTE_KEY, *sem_keys])
    else:
        fmat, smat = MatFile(fpath, [*FEATURE_KEYS, NOTE_KEY]), MatFile(spath, sem_keys)
    fix_feat = "it must hold 'features' (D × N) and 'labels' (N × 1, 1-based): re-download it or " \
               "write it with zsl_gen.data.write_res101"
    if not all(k in fmat for k in FEATURE_KEYS):
        require_keys(fpath, fmat.keys(), FEATURE_KEYS, fix_feat)
    required = [semantic_key, *(f"{n}_loc" for n in REQUIRED_LOCS)]
    if not all(k in smat for k in required):
        fix_sem = (f"it must hold the semantic matrix '{semantic_key}' (A × C) and 1-based locations "
                   "'trainval_loc', 'test_seen_loc', 'test_unseen_loc'; if your matrix has another name, give "
                   "it (zsl-train: dataset.semantic_key=<key>; zsl-data: --semantic-key <key>), or add the key")
        require_keys(spath, smat.keys(), required, fix_sem)

    origin = Origin.for_xlsa17(fpath, spath, semantic_key)
    labels = index_vector(fmat.get("labels"), origin.labels) - 1
    features = feature_matrix(fmat.get("features"), labels.shape[0], origin.features)
    names = string_list(smat.get("allclasses_names")) if "allclasses_names" in smat else None
    max_label = int(labels.max()) + 1 if labels.size else 0
    semantics = semantic_matrix(smat.get(semantic_key), len(names) if names else None, max_label,
                                origin.semantics)
    if not names:
        names = default_class_names(semantics.shape[0])
    locs = {n: index_vector(smat.get(f"{n}_loc"), origin.loc(n)) - 1
            for n in REQUIRED_LOCS + OPTIONAL_LOCS if f"{n}_loc" in smat}
    stored = (string_list(smat.get("semantic_space")) or [None])[0] or None if "semantic_space" in smat else None
    check_semantic_space(semantic_space, stored, f"key 'semantic_space' of {spath}")
    if stored is None and semantic_space == "att" and "sent" in Path(semantics_file).name.lower():
        # dataset=cub sets `att` itself: `dataset.semantics_file=sent_splits.mat` alone would label sentences `att`
        raise DataError(f"{spath} holds sentence embeddings by its name, but dataset.semantic_space=att: results "
                        "would be labelled with the wrong space; use the sentence config (CUB: dataset=cub_sent) or "
                        "dataset.semantic_space=sent; if the file really holds attributes, record it: zsl-data "
                        "convert <dir> <new dir> --to xlsa17 --semantics-file " + Path(semantics_file).name
                        + " --semantic-space att")
    if semantic_space is None:
        semantic_space = stored
        if semantic_space is None:
            # FLO's release keeps its sentence embeddings under 'att' in att_splits.mat (REFERENCE §1)
            semantic_space = "sent" if ("sent" in semantics_file.lower() or "sent" in semantic_key.lower()
                                        or str(name).upper() == "FLO") else "att"
    files = {str(fpath.resolve()): sha256_file(fpath), str(spath.resolve()): sha256_file(spath)}
    note = (string_list(fmat.get(NOTE_KEY)) or [None])[0] if NOTE_KEY in fmat else None
    raw = RawDataset(name=name, features=features, labels=labels, semantics=semantics, class_names=names,
                     locs=locs, semantic_space=semantic_space, files=files, features_note=note or None)
    return validate_raw(raw, origin)


def default_class_names(n: int) -> list[str]:
    """``["class_000", "class_001", ...]`` for files without ``allclasses_names``."""
    return [f"class_{i:03d}" for i in range(n)]


def _cell_column(strings: list[str]) -> np.ndarray:
    cell = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cell[i, 0] = s
    return cell


def _loc_column(idx: np.ndarray, n: int) -> np.ndarray:
    dtype = np.uint16 if n < np.iinfo(np.uint16).max else np.uint32
    return (np.asarray(idx, dtype=np.int64) + 1).astype(dtype).reshape(-1, 1)


def image_file_names(raw: RawDataset) -> list[str]:
    """Stand-in ``image_files`` entries: ``<class>/sample_<i>`` (1-based i)."""
    names = raw.class_names
    return [f"{names[int(y)]}/sample_{i + 1:06d}" for i, y in enumerate(raw.labels)]


_MI_INT8, _MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_UTF8 = 1, 5, 6, 14, 16
_MX_CELL, _MX_CHAR = 1, 4


def _pad8(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 8)


def _element(mi_type: int, payload: bytes) -> bytes:
    return struct.pack("=II", mi_type, len(payload)) + _pad8(payload)


def _matrix_header(mx_class: int, dims: tuple[int, int], name: str) -> bytes:
    return (_element(_MI_UINT32, struct.pack("=II", mx_class, 0))
            + _element(_MI_INT32, struct.pack("=ii", *dims))
            + _element(_MI_INT8, name.encode("ascii")))


def cell_column_element(name: str, strings: list[str]) -> bytes:
    """A MAT v5 data element holding ``strings`` as an N × 1 cell of 1 × L char arrays (UTF-8 data).

    Hand-encoded because ``scipy.io.savemat`` spends ~50 µs per cell (seconds for AWA2's 37k files).
    """
    parts = []
    for s in strings:
        parts.append(_element(_MI_MATRIX, _matrix_header(_MX_CHAR, (1, len(s)), "")
                              + _element(_MI_UTF8, s.encode("utf-8"))))
    return _element(_MI_MATRIX, _matrix_header(_MX_CELL, (len(strings), 1), name) + b"".join(parts))


def write_res101(raw: RawDataset, path: str | Path, *, compress: bool = False, note: str | None = None) -> Path:
    """Write ``raw``'s features as a format-exact xlsa17 ``res101.mat`` (MATLAB v5), atomically.

    Layout: ``features`` D × N float64, ``labels`` N × 1 float64 (1-based), ``image_files`` N × 1 cell
    (stand-in names ``<class>/sample_<i>``: ``RawDataset`` does not keep the originals), and ``simulated`` (a
    string saying what the features are) when ``note`` (default: ``raw.features_note``) is given.
    """
    feats = np.asarray(raw.features)
    payload = {
        "features": feats.T.astype(np.float64),
        "labels": (np.asarray(raw.labels, dtype=np.float64) + 1.0).reshape(-1, 1),
    }
    note = note if note is not None else raw.features_note
    if note:
        payload[NOTE_KEY] = note
    files = cell_column_element("image_files", image_file_names(raw))

    def write(fh) -> None:
        scipy.io.savemat(fh, payload, do_compression=compress)
        fh.write(files)

    return atomic_write(path, write)


def write_att_splits(raw: RawDataset, path: str | Path, *, semantic_key: str = "att") -> Path:
    """Write the semantics and split locations as an xlsa17 ``att_splits.mat`` (MATLAB v5), atomically.

    Layout: ``att`` A × C float64, ``allclasses_names`` C × 1 cell, ``<split>_loc`` 1-based column
    vectors, plus ``semantic_space`` (a string; other readers ignore extra keys).
    """
    n = int(raw.features.shape[0])
    payload: dict[str, Any] = {
        semantic_key: np.asarray(raw.semantics, dtype=np.float64).T,
        "allclasses_names": _cell_column(list(raw.class_names)),
        "semantic_space": raw.semantic_space,
    }
    for name, idx in raw.locs.items():
        payload[f"{name}_loc"] = _loc_column(idx, n)
    return atomic_write(path, lambda fh: scipy.io.savemat(fh, payload))
