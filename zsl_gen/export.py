"""Reusable trained generators: export to a directory, load without Lightning or pickle, synthesize.

An export directory holds

- ``generator.safetensors``: the system's weights (``state.*``) and the training class semantics
  (``class_semantics``, ``(C, A)``, preprocessed as in training);
- ``generator.yaml``: primitive-only metadata — the system class (``_target_``, always under
  ``zsl_gen.systems.``), its hyper-parameters, feature/semantic dims, the fitted preprocessing statistics,
  class names with their seen/unseen role, the sha256 of the semantic matrix and of the weights file,
  the dataset it was trained on and the library versions.

The weights file's header also holds ``meta_sha256``, the digest of the yaml's content (all but
``weights_sha256``): an edited ``generator.yaml`` is refused at load instead of silently changing the
preprocessing or the classifier settings an evaluation uses.

``load_generator(path).synthesize(semantics, n_per_class, seed)`` gives features for any class vectors,
including classes added after training.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from zsl_gen.data._io import move_into_place, sha256_file, temp_dir_beside
from zsl_gen.data.protocol import apply_feature_scaling, l2_rows, minmax_offset_span
from zsl_gen.data.types import ZSLData
from zsl_gen.errors import CheckpointError, ConfigError, DataError, write_failure
from zsl_gen.systems.base import GeneratorSystem

FORMAT = "zsl-gen-generator/1"
WEIGHTS, META = "generator.safetensors", "generator.yaml"
ALLOWED_PREFIX = "zsl_gen.systems."


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def semantics_checksum(semantics: torch.Tensor | np.ndarray) -> str:
    """sha256 of a ``(C, A)`` semantic matrix as float32 C-order bytes."""
    array = semantics.detach().cpu().numpy() if isinstance(semantics, torch.Tensor) else np.asarray(semantics)
    return sha256_bytes(np.ascontiguousarray(array, dtype=np.float32).tobytes())


def _primitive(value: Any) -> Any:
    """Plain Python containers/scalars only (what yaml.safe_dump and weights_only loading accept)."""
    if isinstance(value, dict):
        return {str(k): _primitive(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_primitive(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"not a primitive value: {type(value).__name__}")


def _check_replaceable(out_dir: Path) -> None:
    """An earlier export is replaced, never a directory that holds anything else (or a file)."""
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in (WEIGHTS, META)) if out_dir.is_dir() \
        else [out_dir.name]
    if others:
        raise ConfigError(f"{out_dir} exists and holds other files than an export ({', '.join(others[:5])}); the "
                          "generator was not exported there: move them away, or export elsewhere")


def export_generator(system: GeneratorSystem, data: ZSLData, out_dir: str | Path,
                     extra: dict[str, Any] | None = None) -> Path:
    """Write ``system`` (trained on ``data``) to ``out_dir`` atomically; returns ``out_dir``."""
    from zsl_gen.results import versions

    out_dir = Path(out_dir)
    if out_dir.exists():
        _check_replaceable(out_dir)
    cls = type(system)
    target = f"{cls.__module__}.{cls.__qualname__}"
    state = {f"state.{k}": v.detach().cpu().contiguous() for k, v in system.state_dict().items()}
    state["class_semantics"] = data.semantics.detach().cpu().float().contiguous()
    tmp = temp_dir_beside(out_dir)
    try:
        seen, unseen = set(data.seen_classes.tolist()), set(data.unseen_classes.tolist())
        meta = {
            "format": FORMAT,
            "_target_": target,
            "hparams": _primitive(dict(system.hparams)),
            "feature_dim": data.feature_dim,
            "semantic_dim": data.semantic_dim,
            "dataset": data.name,
            "semantic_space": data.semantic_space,
            "split": data.split,
            "preprocessing": _primitive(data.preprocessing),
            "classes": [{"name": n, "role": "seen" if i in seen else "unseen" if i in unseen else "other"}
                        for i, n in enumerate(data.class_names)],
            "semantics_sha256": semantics_checksum(data.semantics),
            "weights_sha256": None,  # filled in below, once the weights file (which holds meta_sha256) exists
            "source_files": dict(data.files),
            "versions": versions(),
            **_primitive(extra or {}),
        }
        save_file(state, str(tmp / WEIGHTS), metadata={"meta_sha256": meta_digest(meta)})
        meta["weights_sha256"] = sha256_file(tmp / WEIGHTS, cached=False)
        (tmp / META).write_text(yaml.safe_dump(meta, sort_keys=False, default_flow_style=None, width=120))
        os.chmod(tmp / WEIGHTS, (tmp / META).stat().st_mode & 0o777)  # safetensors writes 0600: as the yaml is
        if out_dir.exists():
            _check_replaceable(out_dir)  # (again: the directory may have changed while the weights were written)
        move_into_place(tmp, out_dir)
    except BaseException as err:
        failure = write_failure(out_dir, err)  # before the partial export goes: it is what filled the disk
        shutil.rmtree(tmp, ignore_errors=True)
        if failure is None:
            raise
        raise failure from err
    return out_dir


def meta_digest(meta: dict[str, Any]) -> str:
    """sha256 of an export's metadata as ``generator.yaml`` reads back (``weights_sha256`` left out: it is
    the digest of the file this one is stored in)."""
    content = yaml.safe_load(yaml.safe_dump({k: v for k, v in meta.items() if k != "weights_sha256"}))
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class Generator:
    """A loaded generator: its system (eval mode, on ``device``) and its export metadata."""

    system: GeneratorSystem
    meta: dict[str, Any]
    class_semantics: torch.Tensor  # (C, A) training class semantics, preprocessed

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.meta["classes"]]

    def class_vectors(self, semantics: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(K, A)`` real, finite class vectors of this generator's semantic dimension, as a float32 tensor."""
        what = (f"semantics must be real (K, {self.meta['semantic_dim']}) class vectors for this generator (trained on "
                f"{self.meta['dataset']}, {self.meta['semantic_space']})")
        if isinstance(semantics, torch.Tensor):
            if semantics.is_complex() or semantics.dtype == torch.bool:
                raise DataError(f"{what}, got a {semantics.dtype} tensor")
            s = semantics.detach().float()
        else:
            try:
                array = np.asarray(semantics)
            except ValueError as err:  # ragged rows
                raise DataError(f"{what}: {err}") from None
            if array.dtype.kind not in "iuf":
                raise DataError(f"{what}, got an array of dtype {array.dtype}")
            s = torch.as_tensor(array.astype(np.float32, copy=False))
        if s.ndim != 2 or s.shape[1] != self.meta["semantic_dim"]:
            raise DataError(f"{what}, got shape {tuple(s.shape)}")
        if not torch.isfinite(s).all():
            raise DataError("semantics contain NaN or Inf: fix the class vectors")
        return s

    def prepare_semantics(self, semantics: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw class vectors ``(K, A)`` → the preprocessing the generator was trained with."""
        s = self.class_vectors(semantics)
        if self.meta["preprocessing"].get("semantics", {}).get("l2"):  # training's own normalisation, bit for bit
            s = torch.from_numpy(l2_rows(s.cpu().numpy()))
        return s

    @torch.no_grad()
    def synthesize(self, semantics: np.ndarray | torch.Tensor, n_per_class: int, seed: int = 0, *,
                   prepared: bool = False, space: str = "scaled") -> torch.Tensor:
        """Features for each class vector.

        Args:
            semantics: ``(K, A)`` class vectors, raw (as in the dataset file) unless ``prepared``.
            n_per_class: samples per class.
            seed: noise seed: the same vectors (in the same order), count and seed give the same features. The
                noise is drawn for all ``K * n_per_class`` rows at once, so a class's features also depend on the
                other classes of the call.
            space: ``"scaled"`` — the feature space the generator works in (MinMax
                scaled with the training statistics); ``"raw"`` — mapped back to the original feature scale.

        Returns:
            ``(K * n_per_class, D)`` float32 features, class-major, on the CPU.
        """
        if space not in ("scaled", "raw"):
            raise CheckpointError(f"space must be 'scaled' or 'raw', got {space!r}")
        for name, value, minimum in (("n_per_class", n_per_class, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not minimum <= value < 2**63:
                raise CheckpointError(f"{name} must be an integer in [{minimum}, 2**63), got {value!r}")
        s = self.class_vectors(semantics) if prepared else self.prepare_semantics(semantics)
        device = self.system.device
        noise = torch.Generator(device=device).manual_seed(int(seed))
        try:
            x = self.system.synthesize(torch.as_tensor(s, dtype=torch.float32).to(device), int(n_per_class), noise)
        except (MemoryError, RuntimeError) as err:
            if not isinstance(err, MemoryError) and not any(w in str(err) for w in ("memory", "alloc", "overflow")):
                raise
            size = len(s) * int(n_per_class) * int(self.meta["feature_dim"]) * 4 / 2**30
            raise CheckpointError(f"n_per_class={n_per_class}: {len(s)} classes × {n_per_class} × "
                                  f"{self.meta['feature_dim']}-d float32 features ({size:.1f} GiB) do not fit in "
                                  f"{device} memory; synthesize fewer per call") from None
        x = x.float().cpu()
        return unscale(x, self.meta["preprocessing"]) if space == "raw" else x


def unscale(x: torch.Tensor | np.ndarray, preprocessing: dict[str, Any]) -> torch.Tensor | np.ndarray:
    """Inverse of the MinMax feature scaling recorded in ``preprocessing`` (identity for 'none'): ``(N, D)``
    scaled features -> ``(N, D)`` raw ones, a tensor for a tensor, an array for an array."""
    if isinstance(x, np.ndarray):
        return unscale(torch.from_numpy(x), preprocessing).numpy()
    feats = preprocessing.get("features", {})
    if feats.get("kind") != "minmax":
        return x
    wide = np.float64 if x.dtype == torch.float64 else np.float32  # float32: scaling's own statistics
    lo, span = (torch.from_numpy(a).to(x.dtype) for a in minmax_offset_span(feats, wide))
    return x * span + lo


def _system_class(target: Any, meta_path: Path) -> type[GeneratorSystem]:
    if not isinstance(target, str) or not target.startswith(ALLOWED_PREFIX):
        raise CheckpointError(f"{meta_path}: refusing _target_={target!r}: an exported generator must name a "
                              f"class under {ALLOWED_PREFIX} (the file was not written by zsl-gen or was edited)")
    module_name, _, class_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise CheckpointError(f"{meta_path}: _target_={target!r} does not exist in this zsl-gen version "
                              f"({_version()}); install the version that exported it") from None
    if not (isinstance(cls, type) and issubclass(cls, GeneratorSystem)):
        raise CheckpointError(f"{meta_path}: _target_={target!r} is not a generator system")
    return cls


def _version() -> str:
    import zsl_gen

    return zsl_gen.__version__


def load_generator(path: str | Path, *, device: str | torch.device = "cpu") -> Generator:
    """Load an exported generator directory (no Lightning checkpoint, no pickle)."""
    from zsl_gen.config import check_torch_device

    check_torch_device(str(torch.device(device)) if not isinstance(device, str) else device)
    path = Path(path)
    meta_path, weights_path = path / META, path / WEIGHTS
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise CheckpointError(f"{p}: missing — pass the directory zsl-train exported (it holds {META} "
                                  f"and {WEIGHTS}, e.g. outputs/train/runs/<run>/generator)")
        if not os.access(p, os.R_OK):
            raise CheckpointError(f"{p}: not readable by this user (permissions {p.stat().st_mode & 0o777:o}); ask its "
                                  f"owner to make it readable (chmod a+r {p})")
    try:
        meta = yaml.safe_load(meta_path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)  # the parser's own message spans lines, with a source excerpt
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise CheckpointError(f"{meta_path}: not valid YAML ({where}{what}); re-export the generator") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a zsl-gen generator export (format {FORMAT!r} expected)")
    cls = _system_class(meta.get("_target_"), meta_path)
    if not isinstance(meta.get("weights_sha256"), str):
        raise CheckpointError(f"{meta_path}: no weights_sha256 (the file was edited or truncated); re-export the "
                              "generator or restore the file")
    digest = sha256_file(weights_path, cached=False)
    if digest != meta.get("weights_sha256"):
        raise CheckpointError(f"{weights_path}: checksum {digest[:12]}… does not match weights_sha256 in {META} "
                              "(the file was modified or truncated); re-export or re-copy the directory")
    try:
        tensors = load_file(str(weights_path))
        with safe_open(str(weights_path), framework="pt") as handle:
            stored = (handle.metadata() or {}).get("meta_sha256")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_path}: unreadable safetensors file ({err}); re-export it") from None
    # exports written before meta_sha256 existed have none: they load as before
    if stored is not None and stored != meta_digest(meta):
        raise CheckpointError(f"{meta_path}: edited since the export (its content no longer matches meta_sha256 "
                              f"in {WEIGHTS}'s header); restore the file or re-export the generator — to change "
                              "the classifier or the number of synthetic samples, pass them to zsl-eval instead")
    try:
        system = cls(**meta["hparams"]).float()  # float32 as trained, whatever torch's default dtype
        state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
        system.load_state_dict(state, strict=True)
    except (TypeError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: weights do not fit {meta['_target_']} ({err}); the export is "
                              "inconsistent — re-export it") from None
    semantics = tensors.get("class_semantics")
    if semantics is None or semantics_checksum(semantics) != meta.get("semantics_sha256"):
        raise CheckpointError(f"{weights_path}: class semantics missing or not matching semantics_sha256")
    system.eval().to(device)
    return Generator(system=system, meta=meta, class_semantics=semantics)


__all__ = ["Generator", "export_generator", "load_generator", "apply_feature_scaling", "unscale"]
