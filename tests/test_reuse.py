"""Reusing a trained generator: the export zsl-train writes, `zsl_gen.load_generator`, zsl-synthesize, zsl-eval."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

import zsl_gen
from zsl_gen.errors import CheckpointError

from cli_helpers import TINY, run_app

def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny zsl-train run (test split only) and its export."""
    from zsl_gen.cli.train import main

    root = tmp_path_factory.mktemp("reuse")
    old = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = "disabled"
    try:
        proc = run_app(main, ["zsl-train", f"hydra.run.dir={root / 'run'}", *TINY, "selections=[paper]"], root)
    finally:
        os.environ.pop("WANDB_MODE") if old is None else os.environ.__setitem__("WANDB_MODE", old)
    assert proc.returncode == 0, proc.stderr
    return {"run": root / "run", "export": root / "run" / "generator"}


@pytest.fixture
def export_copy(trained, tmp_path):
    """A private copy of the export that a test may damage."""
    return Path(shutil.copytree(trained["export"], tmp_path / "generator"))


def raw_test_semantics(run: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The dataset's raw class semantics, class names and unseen class ids, as the run saw them."""
    from zsl_gen.pipeline import load_dataset

    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    raw = load_dataset(cfg.dataset)
    return raw.semantics, raw.class_names, raw.unseen_classes


# ---- the export ---------------------------------------------------------------------------------------------
def test_export_is_primitive_yaml_with_everything_needed_to_reuse(trained):
    from safetensors.torch import load_file

    from zsl_gen.export import semantics_checksum
    from zsl_gen.pipeline import load_dataset, protocol_data

    export = trained["export"]
    assert sorted(p.name for p in export.iterdir()) == ["generator.safetensors", "generator.yaml"]
    text = (export / "generator.yaml").read_text()
    assert "!!" not in text and "python/" not in text  # no YAML tags of any kind
    meta = yaml.safe_load(text)
    assert yaml.safe_load(yaml.safe_dump(meta)) == meta

    def primitive(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and primitive(v) for k, v in value.items())
        if isinstance(value, list):
            return all(primitive(v) for v in value)
        return value is None or isinstance(value, (bool, int, float, str))

    assert primitive(meta)
    assert meta["format"] == "zsl-gen-generator/1"
    assert meta["_target_"] == "zsl_gen.systems.cvae.ConditionalVAE"
    assert meta["hparams"]["hidden_dim"] == 64 and meta["hparams"]["feature_dim"] == 512
    assert (meta["feature_dim"], meta["semantic_dim"]) == (512, 64)
    assert meta["method"] == "cvae" and meta["epochs"] == 2 and meta["syn_num"] == 50 and meta["seed"] == 0
    assert meta["classifier"]["epochs"] == 2
    assert {"torch", "pytorch_lightning", "zsl_gen", "numpy"} <= set(meta["versions"])

    # the preprocessing statistics are those the run fitted (and wrote to preprocessing.json)
    prep = json.loads((trained["run"] / "preprocessing.json").read_text())
    assert meta["preprocessing"]["features"]["kind"] == "minmax"
    assert np.allclose(meta["preprocessing"]["features"]["max"], prep["features"]["max"])
    assert np.allclose(meta["preprocessing"]["features"]["min"], prep["features"]["min"])
    assert len(meta["preprocessing"]["features"]["max"]) == 512

    # class names with roles, and the checksum of the exact semantic matrix the generator was trained with
    cfg = OmegaConf.load(trained["run"] / ".hydra" / "config.yaml")
    raw = load_dataset(cfg.dataset)
    data = protocol_data(cfg, raw, "test")
    assert [c["name"] for c in meta["classes"]] == raw.class_names
    roles = {c["name"]: c["role"] for c in meta["classes"]}
    assert sorted(n for n, r in roles.items() if r == "unseen") == sorted(raw.class_names[i] for i in raw.unseen_classes)
    assert sum(r == "seen" for r in roles.values()) == 30
    assert meta["semantics_sha256"] == semantics_checksum(data.semantics)
    tensors = load_file(str(export / "generator.safetensors"))
    assert torch.equal(tensors["class_semantics"], data.semantics.float())
    digest = hashlib.sha256((export / "generator.safetensors").read_bytes()).hexdigest()
    assert meta["weights_sha256"] == digest


def test_loaded_weights_are_the_final_trained_weights(trained):
    generator = zsl_gen.load_generator(trained["export"])
    ckpt = torch.load(trained["run"] / "checkpoints" / "test" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1  # 0-based: the last of 2 epochs
    loaded = generator.system.state_dict()
    assert set(loaded) == set(ckpt["state_dict"])
    assert all(torch.equal(loaded[k], ckpt["state_dict"][k]) for k in loaded)


def test_synthesize_is_seeded_and_needs_no_trainer(trained, monkeypatch):
    import pytorch_lightning as pl

    def no_trainer(*args, **kwargs):
        raise AssertionError("a Lightning Trainer was created")

    monkeypatch.setattr(pl.Trainer, "__init__", no_trainer)
    generator = zsl_gen.load_generator(trained["export"])
    assert generator.system._trainer is None and not generator.system.training
    semantics, _, unseen = raw_test_semantics(trained["run"])
    vectors = semantics[unseen[:3]]
    a = generator.synthesize(vectors, n_per_class=7, seed=0)
    b = generator.synthesize(vectors, n_per_class=7, seed=0)
    c = generator.synthesize(vectors, n_per_class=7, seed=1)
    assert a.shape == (21, 512) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the generator conditions on the class vector: different classes, different features
    assert not torch.allclose(a[:7].mean(0), a[7:14].mean(0))
    # numpy and torch inputs agree
    assert torch.equal(generator.synthesize(torch.from_numpy(vectors), 7, seed=0), a)


def test_synthesize_refuses_non_integer_counts_and_says_when_memory_runs_out(trained, monkeypatch):
    generator = zsl_gen.load_generator(trained["export"])
    vectors = raw_test_semantics(trained["run"])[0][:2]
    for kwargs, message in (({"n_per_class": 2.5}, r"n_per_class must be an integer in \[1, 2\*\*63\), got 2.5"),
                            ({"n_per_class": 2, "seed": -1}, r"seed must be an integer in \[0, 2\*\*63\), got -1"),
                            ({"n_per_class": 2, "seed": 2**64}, r"seed must be an integer in \[0, 2\*\*63\)")):
        with pytest.raises(CheckpointError, match=message):
            generator.synthesize(vectors, **kwargs)
    assert generator.synthesize(vectors, np.int64(2)).shape[0] == 4  # numpy integers are integers

    def out_of_memory(*args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                           "you tried to allocate 128000000000 bytes.")

    monkeypatch.setattr(generator.system, "synthesize", out_of_memory)
    with pytest.raises(CheckpointError, match=r"n_per_class=100000000: 2 classes × 100000000 × \d+-d float32 features "
                                              r"\([\d.]+ GiB\) do not fit in cpu memory; synthesize fewer per call"):
        generator.synthesize(vectors, 100_000_000)


def test_loading_does_not_unpickle(trained, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading a generator")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    generator = zsl_gen.load_generator(trained["export"])
    out = generator.synthesize(generator.class_semantics[:2], 3, seed=0, prepared=True)
    assert out.shape == (6, 512) and torch.isfinite(out).all()


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "zsl_gen.export.shutil.rmtree",
                                    "zsl_gen.systems.base.IndexBatches"])
def test_foreign_target_is_refused(export_copy, monkeypatch, target):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
    meta_path = export_copy / "generator.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    meta["_target_"] = target
    meta["hparams"] = {"command": "touch pwned"} if target == "os.system" else meta["hparams"]
    meta_path.write_text(yaml.safe_dump(meta))
    with pytest.raises(CheckpointError) as info:
        zsl_gen.load_generator(export_copy)
    assert str(meta_path) in str(info.value) and target in str(info.value)
    assert not calls and not (Path.cwd() / "pwned").exists()


def test_tampered_or_truncated_weights_are_clear_errors(export_copy):
    weights = export_copy / "generator.safetensors"
    original = weights.read_bytes()
    flipped = bytearray(original)
    for i in range(len(flipped) // 2, len(flipped) // 2 + 8):
        flipped[i] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError) as info:
        zsl_gen.load_generator(export_copy)
    message = str(info.value)
    assert str(weights) in message and "checksum" in message and "re-export" in message

    weights.write_bytes(original[: len(original) // 3])
    with pytest.raises(CheckpointError) as info:
        zsl_gen.load_generator(export_copy)
    assert str(weights) in str(info.value) and "truncated" in str(info.value)

    # a truncated file whose checksum was "fixed" in the yaml still fails clearly (the safetensors reader)
    meta_path = export_copy / "generator.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    meta["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    meta_path.write_text(yaml.safe_dump(meta))
    with pytest.raises(CheckpointError) as info:
        zsl_gen.load_generator(export_copy)
    assert str(weights) in str(info.value) and "re-export" in str(info.value)

    # untouched bytes load again
    weights.write_bytes(original)
    meta["weights_sha256"] = hashlib.sha256(original).hexdigest()
    meta_path.write_text(yaml.safe_dump(meta))
    assert zsl_gen.load_generator(export_copy).meta["weights_sha256"] == meta["weights_sha256"]


def test_class_semantics_that_do_not_match_the_recorded_checksum_are_refused(export_copy):
    # weights rewritten consistently (header digest, weights_sha256) but with other class vectors: the
    # semantics_sha256 recorded at export still tells
    from safetensors.torch import load_file, save_file

    weights = export_copy / "generator.safetensors"
    tensors = load_file(str(weights))
    tensors["class_semantics"] = tensors["class_semantics"] + 0.5
    save_file(tensors, str(weights))
    rewrite_export_meta(export_copy, yaml.safe_load((export_copy / "generator.yaml").read_text()))
    with pytest.raises(CheckpointError, match="class semantics missing or not matching semantics_sha256"):
        zsl_gen.load_generator(export_copy)


def test_unscale_inverts_minmax_scaling_with_its_offsets():
    # per-dimension minima other than 0 (the simulator's are all 0), and a constant dimension (span 1)
    from zsl_gen.data import apply_feature_scaling
    from zsl_gen.export import unscale

    prep = {"features": {"kind": "minmax", "min": [1.0, -2.0, 3.0], "max": [3.0, 2.0, 3.0]}}
    scaled = torch.tensor([[0.0, 0.5, 0.2], [1.0, 1.0, 0.7]])
    raw = unscale(scaled, prep)
    torch.testing.assert_close(raw, torch.tensor([[1.0, 0.0, 3.2], [3.0, 2.0, 3.7]]))
    torch.testing.assert_close(apply_feature_scaling(raw, prep), scaled)
    np.testing.assert_allclose(unscale(scaled.numpy(), prep), raw.numpy())  # an array for an array
    wide = unscale(scaled.double(), {"features": {"kind": "minmax", "min": [1234.1], "max": [1234.3]}})[:, :1]
    torch.testing.assert_close(wide, torch.tensor([[1234.1], [1234.3]], dtype=torch.float64), rtol=0, atol=1e-12)


def rewrite_export_meta(export_dir: Path, meta: dict) -> None:
    """Write ``meta`` as if the export had been made with it (its digest in the weights header, their sha256)."""
    from safetensors.torch import load_file, save_file

    from zsl_gen.export import meta_digest

    weights = export_dir / "generator.safetensors"
    save_file(load_file(str(weights)), str(weights), metadata={"meta_sha256": meta_digest(meta)})
    meta["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (export_dir / "generator.yaml").write_text(yaml.safe_dump(meta))


@pytest.mark.parametrize("edit", ["scaling", "classifier", "syn_num", "no_preprocessing", "no_weights_sha256"])
def test_an_edited_generator_yaml_is_refused_naming_it(trained, export_copy, edit):
    meta_path = export_copy / "generator.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    if edit == "scaling":  # would silently change every synthesized feature
        meta["preprocessing"]["features"]["max"] = meta["preprocessing"]["features"]["min"]
    elif edit == "classifier":
        meta["classifier"] = "x"
    elif edit == "syn_num":
        meta["syn_num"] = 0
    elif edit == "no_preprocessing":
        del meta["preprocessing"]
    else:
        del meta["weights_sha256"]
    meta_path.write_text(yaml.safe_dump(meta))
    with pytest.raises(CheckpointError) as info:
        zsl_gen.load_generator(export_copy)
    message = str(info.value)
    assert message.startswith(str(meta_path)) and ("edited" in message), message
    # the original content written back in another key order and layout loads again
    original = yaml.safe_load((trained["export"] / "generator.yaml").read_text())
    meta_path.write_text(yaml.safe_dump(dict(reversed(list(original.items()))), default_flow_style=True))
    assert zsl_gen.load_generator(export_copy).meta == original


def test_missing_export_files_are_clear_errors(export_copy, tmp_path):
    (export_copy / "generator.safetensors").unlink()
    with pytest.raises(CheckpointError, match="generator.safetensors: missing — pass the directory zsl-train"):
        zsl_gen.load_generator(export_copy)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="generator.yaml: missing"):
        zsl_gen.load_generator(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="nowhere"):
        zsl_gen.load_generator(tmp_path / "nowhere")
    (export_copy / "generator.safetensors").write_bytes(b"")
    (export_copy / "generator.yaml").write_text("format: [unclosed\n")
    with pytest.raises(CheckpointError, match="not valid YAML") as info:
        zsl_gen.load_generator(export_copy)
    assert "\n" not in str(info.value) and "line 2, column 1" in str(info.value)  # one line, with the place


# ---- zsl-synthesize ---------------------------------------------------------------------------------------------
def synthesize(*args: str):
    """zsl-synthesize in this process: (exit code, stdout, stderr)."""
    from zsl_gen.cli.synthesize import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def new_classes(trained, tmp_path_factory):
    """Three 'new' class vectors (unseen classes' semantics, perturbed), as .csv, as .npy+classes.txt and as a
    bring-your-own directory."""
    root = tmp_path_factory.mktemp("new_classes")
    semantics, _, unseen = raw_test_semantics(trained["run"])
    rng = np.random.default_rng(0)
    vectors = (semantics[unseen[:3]] + 0.05 * rng.random((3, semantics.shape[1]))).astype(np.float32)
    names = ["okapi", "quagga", "narwhal"]
    (root / "new.csv").write_text("".join(f"{n}," + ",".join(repr(float(v)) for v in row) + "\n"
                                          for n, row in zip(names, vectors)))
    (root / "npy").mkdir()
    np.save(root / "npy" / "vectors.npy", vectors)
    (root / "npy" / "classes.txt").write_text("\n".join(names) + "\n")
    (root / "byo").mkdir()
    np.save(root / "byo" / "semantics.npy", vectors)
    (root / "byo" / "classes.txt").write_text("\n".join(names) + "\n")
    return {"csv": root / "new.csv", "npy": root / "npy" / "vectors.npy", "byo": root / "byo",
            "vectors": vectors, "names": names}


@pytest.mark.parametrize("source", ["csv", "npy", "byo"])
def test_synthesize_new_classes_from_each_source(trained, new_classes, tmp_path, source):
    out = tmp_path / "syn"
    code, stdout, stderr = synthesize(f"generator={trained['export']}", f"semantics={new_classes[source]}",
                                      "n_per_class=5", f"out={out}", "seed=3")
    assert code == 0, stderr
    assert "3 classes × 5 = 15 features" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["classes.txt", "features.npy", "labels.npy", "semantics.npy",
                                                     "synthesis.json"]
    features, labels = np.load(out / "features.npy"), np.load(out / "labels.npy")
    assert features.shape == (15, 512) and features.dtype == np.float32
    assert labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert np.allclose(np.load(out / "semantics.npy"), new_classes["vectors"])
    assert (out / "classes.txt").read_text().split() == new_classes["names"]
    provenance = json.loads((out / "synthesis.json").read_text())
    assert provenance["n_per_class"] == 5 and provenance["seed"] == 3 and provenance["space"] == "raw"
    assert provenance["trained_on"] == "synthetic" and provenance["method"] == "cvae"
    assert provenance["classes"] == new_classes["names"]
    source = new_classes[source] / "semantics.npy" if source == "byo" else new_classes[source]
    assert provenance["semantics_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    meta = yaml.safe_load((trained["export"] / "generator.yaml").read_text())
    assert provenance["generator_weights_sha256"] == meta["weights_sha256"]
    assert provenance["semantic_space"] == "att" and provenance["versions"]["torch"] == torch.__version__
    # the CLI gives what the Python API gives
    expected = zsl_gen.load_generator(trained["export"]).synthesize(new_classes["vectors"], 5, seed=3, space="raw")
    assert np.allclose(features, expected.numpy(), atol=1e-6)


def test_synthesized_output_becomes_a_byo_dataset(trained, new_classes, tmp_path):
    from zsl_gen.data import load_byo

    out = tmp_path / "syn"
    code, _, stderr = synthesize(f"generator={trained['export']}", f"semantics={new_classes['csv']}",
                                 "n_per_class=10", f"out={out}")
    assert code == 0, stderr
    (out / "splits.json").write_text(json.dumps({"seen_classes": ["okapi", "quagga"], "unseen_classes": ["narwhal"]}))
    raw = load_byo(out)
    assert raw.name == "syn" and raw.class_names == new_classes["names"]
    assert raw.features.shape == (30, 512) and raw.semantics.shape == (3, 64)
    assert np.array_equal(raw.features, np.load(out / "features.npy"))
    assert len(raw.locs["test_unseen"]) == 10 and set(raw.labels[raw.locs["test_unseen"]]) == {2}
    assert len(raw.locs["trainval"]) + len(raw.locs["test_seen"]) == 20
    assert raw.unseen_classes.tolist() == [2] and raw.seen_classes.tolist() == [0, 1]


def test_raw_space_inverts_the_minmax_scaling(trained, new_classes, tmp_path):
    from zsl_gen.data import apply_feature_scaling

    common = (f"generator={trained['export']}", f"semantics={new_classes['npy']}", "n_per_class=4", "seed=5")
    assert synthesize(*common, f"out={tmp_path / 'raw'}", "space=raw")[0] == 0
    assert synthesize(*common, f"out={tmp_path / 'scaled'}", "space=scaled")[0] == 0
    raw, scaled = np.load(tmp_path / "raw" / "features.npy"), np.load(tmp_path / "scaled" / "features.npy")
    meta = zsl_gen.load_generator(trained["export"]).meta
    assert np.allclose(apply_feature_scaling(raw, meta["preprocessing"]), scaled, atol=1e-5)
    assert not np.allclose(raw, scaled)  # the fitted ranges are not [0, 1]: the inverse really changed them
    assert scaled.min() >= 0 and scaled.max() <= 1  # sigmoid output, the space the generator works in
    assert raw.max() > 1


@pytest.mark.parametrize("change, message", [
    ({"out": None}, "missing out="),
    ({"n_per_class": "0"}, "n_per_class must be >= 1, got 0"),
    ({"n_per_class": "many"}, "n_per_class and seed must be integers"),
    ({"semantics": "WRONG_DIM"}, "10-d class vectors, but the generator expects 64-d"),
    ({"semantics": "MISSING"}, "no such semantics file"),
    ({"generator": "NOWHERE"}, "generator.yaml: missing"),
    ({"space": "log"}, "space must be 'scaled' or 'raw'"),
    ({"colour": "red"}, "unexpected argument 'colour=red'"),
    ({"seed": str(2**64)}, "seed must be an integer in [0, 2**63), got 18446744073709551616"),
])
def test_synthesize_bad_arguments_are_one_line(trained, new_classes, tmp_path, change, message):
    np.save(tmp_path / "wrong.npy", np.ones((2, 10), np.float32))
    special = {"WRONG_DIM": str(tmp_path / "wrong.npy"), "MISSING": str(tmp_path / "missing.csv"),
               "NOWHERE": str(tmp_path / "nowhere")}
    args = {"generator": str(trained["export"]), "semantics": str(new_classes["csv"]), "n_per_class": "3",
            "out": str(tmp_path / "out")}
    args.update(change)
    code, _, stderr = synthesize(*(f"{k}={special.get(v, v)}" for k, v in args.items() if v is not None))
    assert code == 2
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert not (tmp_path / "out").exists()


# ---- zsl-eval ---------------------------------------------------------------------------------------------------
def zsl_eval(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    from zsl_gen.cli.evaluate import main

    return run_app(main, ["zsl-eval", f"hydra.run.dir={tmp_path / 'eval'}", *overrides], tmp_path)


def test_eval_help_lists_the_groups_eval_composes_and_every_dataset(tmp_path):
    from zsl_gen.cli.evaluate import main

    proc = run_app(main, ["zsl-eval", "--help"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("zsl-eval: evaluate an exported generator"), proc.stdout
    groups = proc.stdout.split("== Configuration groups")[1].split("== Config ==")[0]
    assert "generator:" not in groups and "trainer:" not in groups and "experiment:" not in groups
    datasets = groups.split("dataset:")[1].split("\n")[0]
    listed = {name.strip(" ,()") for name in datasets.split("(")[1].split(")")[0].split(",")} | {"byo"}
    assert listed == {p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "dataset").glob("*.yaml")}


def test_eval_of_an_export_trains_no_generator(trained, tmp_path, monkeypatch):
    import pytorch_lightning as pl

    import zsl_gen.eval
    from zsl_gen.systems.base import GeneratorSystem

    def no_training(*args, **kwargs):
        raise AssertionError("zsl-eval trained a generator")

    monkeypatch.setattr(pl.Trainer, "fit", no_training)
    monkeypatch.setattr(GeneratorSystem, "on_fit_start", no_training)
    classifier_runs = []
    real_train_and_evaluate = zsl_gen.eval.train_and_evaluate
    monkeypatch.setattr(zsl_gen.eval, "train_and_evaluate",
                        lambda *a, **k: classifier_runs.append(1) or real_train_and_evaluate(*a, **k))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    proc = zsl_eval(tmp_path, f"generator={trained['export']}")
    assert proc.returncode == 0, proc.stderr
    # one final-classifier training and nothing else: training evaluated one per generator epoch (2 here)
    # on top of training the generator (wall-clock times are too noisy on a shared 2-core box to compare)
    assert len(classifier_runs) == 1
    assert len(json.loads((trained["run"] / "curves.json").read_text())["test"]["epochs"]) == 2
    run = tmp_path / "eval"
    results = json.loads((run / "results.json").read_text())
    assert set(results["results"]) == {"paper", "last"}
    assert results["results"]["paper"]["optimistic"] and not results["results"]["last"]["optimistic"]
    assert results["method"] == "cvae" and results["generator"]["trained_on"] == "synthetic"
    assert results["generator"]["same_semantics"] is True
    meta = yaml.safe_load((trained["export"] / "generator.yaml").read_text())
    assert results["generator"]["weights_sha256"] == meta["weights_sha256"]
    # the exported classifier settings (2 epochs, syn_num 50), not eval.yaml's defaults (25 epochs)
    assert results["config"]["classifier"]["epochs"] == 2 and results["protocol"]["syn_num"] == 50
    curves = json.loads((run / "curves.json").read_text())["test"]
    assert curves["rows"] == ["classifier epoch 1", "classifier epoch 2"]
    # `paper` is the best H over the classifier epochs, `last` the final classifier epoch
    h = np.asarray(curves["H"])[0, :, 0]
    assert results["results"]["paper"]["gzsl"]["H"] == pytest.approx(h.max(), abs=0.01)
    assert results["results"]["last"]["gzsl"]["H"] == pytest.approx(h[-1], abs=0.01)
    assert not (run / "checkpoints").exists() and not (run / "generator").exists()
    assert "paper*" in (run / "evaluate.log").read_text()  # the log file holds the summary table too


def changed_copy_of_the_training_data(run: Path, out: Path, change) -> Path:
    """The run's dataset with its features ``change(features)``, saved in the bring-your-own format."""
    from dataclasses import replace

    from zsl_gen.data.byo import save_byo
    from zsl_gen.pipeline import load_dataset

    raw = load_dataset(OmegaConf.load(run / ".hydra" / "config.yaml").dataset)
    return save_byo(replace(raw, features=change(raw.features).astype(np.float32)), out)


def test_eval_on_negative_features_uses_the_exports_scaling_and_refuses_only_an_unscaled_generator(
        trained, tmp_path, monkeypatch):
    from zsl_gen.cli.train import main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    negative = changed_copy_of_the_training_data(trained["run"], tmp_path / "negative", lambda x: x - 5.0)
    # a MinMax export scales them with its own statistics (fitted on non-negative features: this is a shifted
    # test set, so the numbers are poor, but it runs)
    proc = zsl_eval(tmp_path, f"generator={trained['export']}", "dataset=byo", f"data_dir={negative}")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "eval" / "results.json").is_file()
    # a generator trained without scaling outputs non-negative features: one line naming the file and the fix
    unit = changed_copy_of_the_training_data(trained["run"], tmp_path / "unit", lambda x: x / x.max())
    unscaled = tmp_path / "unscaled"
    trained_unscaled = run_app(main, ["zsl-train", f"hydra.run.dir={unscaled}", *TINY, "selections=[paper]",
                                      "dataset=byo", f"data_dir={unit}", "dataset.feature_scaling=none",
                                      "logger=none"], tmp_path)
    assert trained_unscaled.returncode == 0, trained_unscaled.stderr
    proc = zsl_eval(tmp_path / "second", f"generator={unscaled / 'generator'}", "dataset=byo", f"data_dir={negative}")
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {negative / 'features.npy'} has negative values") and \
        "trained without feature scaling" in lines[0] and "dataset.feature_scaling=minmax" in lines[0]


def test_eval_with_the_exports_seed_reproduces_the_runs_last_epoch(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    proc = zsl_eval(tmp_path, f"generator={trained['export']}")
    assert proc.returncode == 0, proc.stderr
    run_curves = json.loads((trained["run"] / "curves.json").read_text())["test"]
    eval_curves = json.loads((tmp_path / "eval" / "curves.json").read_text())["test"]
    for metric in ("S", "U", "H", "T1"):
        assert eval_curves[metric][0] == run_curves[metric][-1]  # the run's last evaluated epoch, exactly
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["seed"] == 0 and results["dataset"]["preprocessing"] == {
        "feature_scaling": "minmax", "l2_semantics": False, "from": "the export"}
    other = zsl_eval(tmp_path / "other", f"generator={trained['export']}", "seed=5")
    assert other.returncode == 0, other.stderr
    assert json.loads((tmp_path / "other" / "eval" / "curves.json").read_text())["test"]["H"] != eval_curves["H"]


def test_eval_with_another_syn_num_reproduces_a_run_trained_with_it(trained, tmp_path, monkeypatch):
    # syn_num does not change generator training: the run with syn_num=30 trains the same weights as the export's
    # (syn_num=50), and zsl-eval syn_num=30 must give its numbers: the classifier's batch size follows syn_num
    from zsl_gen.cli.train import main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    tiny = [o for o in TINY if not o.startswith("generator.syn_num=")]
    proc = run_app(main, ["zsl-train", f"hydra.run.dir={tmp_path / 'run30'}", *tiny, "generator.syn_num=30",
                          "selections=[paper]", "logger=none"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert yaml.safe_load((trained["export"] / "generator.yaml").read_text())["classifier_batch_size_follows_syn_num"]
    proc = zsl_eval(tmp_path, f"generator={trained['export']}", "syn_num=30")
    assert proc.returncode == 0, proc.stderr
    run_curves = json.loads((tmp_path / "run30" / "curves.json").read_text())["test"]
    eval_curves = json.loads((tmp_path / "eval" / "curves.json").read_text())["test"]
    for metric in ("S", "U", "H", "T1"):
        assert eval_curves[metric][0] == run_curves[metric][-1]
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["config"]["classifier"]["batch_size"] == 30
    # a batch size given apart from syn_num stays as given
    proc = zsl_eval(tmp_path / "fixed", f"generator={trained['export']}", "syn_num=30", "classifier.batch_size=64")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "fixed" / "eval" / "results.json").read_text())["config"]["classifier"][
        "batch_size"] == 64


def test_a_batch_size_set_apart_from_syn_num_is_kept_by_zsl_eval():
    from zsl_gen.cli.evaluate import batch_size_follows_syn_num

    assert not batch_size_follows_syn_num({"syn_num": 400, "classifier": {"batch_size": 32},
                                           "classifier_batch_size_follows_syn_num": False})  # CADA-VAE's recipe
    assert not batch_size_follows_syn_num({"syn_num": 300, "classifier": {"batch_size": 300},
                                           "classifier_batch_size_follows_syn_num": False})  # set to equal it
    assert batch_size_follows_syn_num({"syn_num": 300, "classifier": {"batch_size": 300}})  # an older export
    assert not batch_size_follows_syn_num({"syn_num": 300, "classifier": {"batch_size": 64}})


@pytest.mark.parametrize("override, message", [
    ("dataset.feature_scaling=none", "error: dataset.feature_scaling: zsl-eval preprocesses the data as the "
                                     "generator was trained"),
    ("dataset.l2_semantics=true", "error: dataset.l2_semantics: zsl-eval preprocesses"),
    ("+classifier.epoch=5", "error: config field `classifier.epoch` is not a classifier setting and would be "
                            "ignored; did you mean `classifier.epochs`?"),
    ("+foo=1", "error: config field `foo` is not a zsl-eval setting"),
])
def test_eval_refuses_settings_it_would_ignore(trained, tmp_path, monkeypatch, override, message):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    proc = zsl_eval(tmp_path, f"generator={trained['export']}", override)
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert not (tmp_path / "eval" / "results.json").exists()


def test_eval_classifier_settings_can_be_overridden(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    proc = zsl_eval(tmp_path, f"generator={trained['export']}", "classifier_from_export=false",
                    "classifier.epochs=3", "syn_num=100")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["config"]["classifier"]["epochs"] == 3 and results["protocol"]["syn_num"] == 100
    assert results["config"]["classifier"]["batch_size"] == 100
    assert results["device"] == "cpu" and results["versions"]["cuda"] == torch.version.cuda
    assert len(json.loads((tmp_path / "eval" / "curves.json").read_text())["test"]["rows"]) == 3


def test_eval_classifier_fields_given_on_the_command_line_beat_the_exported_ones(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    proc = zsl_eval(tmp_path, f"generator={trained['export']}", "classifier.epochs=3")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["config"]["classifier"]["epochs"] == 3  # given; the export says 2
    assert results["config"]["classifier"]["batch_size"] == 50 and results["protocol"]["syn_num"] == 50  # exported
    assert len(json.loads((tmp_path / "eval" / "curves.json").read_text())["test"]["rows"]) == 3


def test_eval_of_a_last_epoch_method_reports_its_paper_number_as_the_last_epoch(export_copy, tmp_path,
                                                                                monkeypatch):
    """An export records its method's paper protocol; a CADA-VAE export (`paper_selection: last`) makes
    zsl-eval's `paper` the final classifier epoch, as CADA-VAE's code reports it, not the best on test."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    meta_path = export_copy / "generator.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    assert meta["paper_selection"] == "best"  # what the cvae run recorded
    rewrite_export_meta(export_copy, {**meta, "paper_selection": "last"})
    proc = zsl_eval(tmp_path, f"generator={export_copy}")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    paper, last = results["results"]["paper"], results["results"]["last"]
    assert paper["rule"] == "last" and not paper["optimistic"] and paper["gzsl"] == last["gzsl"]
    assert results["protocol"]["paper_selection"] == "last"


def test_eval_on_a_dataset_of_other_dims_is_a_clear_error(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    proc = zsl_eval(tmp_path, f"generator={trained['export']}", "dataset.synthetic.feature_dim=256")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "generator expects 512-d features and 64-d semantics" in lines[0] and "256" in lines[0]
    assert not (tmp_path / "eval" / "results.json").exists()
    proc = zsl_eval(tmp_path, f"generator={tmp_path / 'nowhere'}")
    assert proc.returncode == 2 and "generator.yaml: missing" in proc.stderr and "Traceback" not in proc.stderr


def test_synthesize_never_deletes_what_it_did_not_write(trained, new_classes, tmp_path, monkeypatch):
    common = (f"generator={trained['export']}", f"semantics={new_classes['csv']}", "n_per_class=2")
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "notes.txt").write_text("mine")
    code, _, stderr = synthesize(*common, f"out={victim}")
    assert code == 2 and "not an earlier zsl-synthesize output (it holds notes.txt, sub)" in stderr, stderr
    assert (victim / "notes.txt").read_text() == "mine" and (victim / "sub").is_dir()
    monkeypatch.chdir(victim / "sub")  # the working directory, or one above it, even if empty
    for out in (".", ".."):
        code, _, stderr = synthesize(*common, f"out={out}")
        assert code == 2 and "working directory" in stderr, stderr
    assert (victim / "notes.txt").exists()
    (tmp_path / "afile").write_text("x")
    code, _, stderr = synthesize(*common, f"out={tmp_path / 'afile'}")
    assert code == 2 and "exists and is a file" in stderr and (tmp_path / "afile").read_text() == "x"
    code, _, stderr = synthesize(*common, f"out={tmp_path / 'afile' / 'sub'}")
    assert code == 2 and f"{tmp_path / 'afile'} is a file, not a directory" in stderr, stderr
    # an earlier output, or an empty directory, is replaced
    out = tmp_path / "syn"
    assert synthesize(*common, f"out={out}")[0] == 0
    code, stdout, stderr = synthesize(*common[:2], "n_per_class=3", f"out={out}")
    assert code == 0 and "= 9 features" in stdout and np.load(out / "labels.npy").shape == (9,), stderr
    (tmp_path / "empty").mkdir()
    assert synthesize(*common, f"out={tmp_path / 'empty'}")[0] == 0


def test_synthesize_refuses_a_symlinked_output_directory(trained, new_classes, tmp_path):
    args = (f"generator={trained['export']}", f"semantics={new_classes['csv']}", "n_per_class=2")
    assert synthesize(*args, f"out={tmp_path / 'real'}")[0] == 0
    (tmp_path / "link").symlink_to(tmp_path / "real")
    code, _, stderr = synthesize(*args, f"out={tmp_path / 'link'}")
    assert code == 2 and len(error_lines(stderr)) == 1 and "is a symbolic link" in stderr, stderr
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "synthesis.json").is_file()


def test_synthesize_reads_a_csv_with_a_header_line(trained, new_classes, tmp_path):
    with_header = tmp_path / "header.csv"
    dim = new_classes["vectors"].shape[1]
    with_header.write_text("name," + ",".join(f"v{i}" for i in range(dim)) + "\n" + new_classes["csv"].read_text())
    # pandas' to_csv of a plain matrix: a header of column numbers, with or without a label for the names
    numbered = tmp_path / "numbered.csv"
    numbered.write_text("name," + ",".join(map(str, range(dim))) + "\n" + new_classes["csv"].read_text())
    blank = tmp_path / "blank.csv"
    blank.write_text("," + ",".join(map(str, range(dim))) + "\n" + new_classes["csv"].read_text())
    labelled = tmp_path / "labelled.csv"  # to_csv(index_label="species"): any label over >= 8 numbered columns
    labelled.write_text("species," + ",".join(map(str, range(1, dim + 1))) + "\n" + new_classes["csv"].read_text())
    for source, out in ((new_classes["csv"], "plain"), (with_header, "header"), (numbered, "numbered"),
                        (blank, "blank"), (labelled, "labelled")):
        code, _, stderr = synthesize(f"generator={trained['export']}", f"semantics={source}", "n_per_class=2",
                                     f"out={tmp_path / out}")
        assert code == 0, stderr
    for out in ("header", "numbered", "blank", "labelled"):
        np.testing.assert_array_equal(np.load(tmp_path / "plain" / "features.npy"),
                                      np.load(tmp_path / out / "features.npy"))
        assert (tmp_path / out / "classes.txt").read_text() == (tmp_path / "plain" / "classes.txt").read_text()


@pytest.mark.parametrize("content, message", [
    ("okapi,1\nokapi,2\n", "classes.csv lists class names more than once ('okapi'); class names must be unique"),
    (" ,1\nquagga,2\n", "class 1 has an empty name"),
    (b"caf\xe9,1\n", "not UTF-8 text"),
    ("\n", "no class in it"),
    ("okapi,1\nquagga,nan\n", "the vectors of 1 classes hold NaN or Inf ('quagga')"),
    ("okapi;1;2\nquagga;3;4\n", "classes.csv:1: no values after the class name; expected `name,v1,...,vA`, comma-"),
    ("name,v1,v2\nokapi,1,2\nquagga,x,4\n", "classes.csv:3: expected `name,v1,...,vA` with numbers"),
])
def test_synthesize_refuses_semantics_a_dataset_could_not_load(trained, tmp_path, content, message):
    path = tmp_path / "classes.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, _, stderr = synthesize(f"generator={trained['export']}", f"semantics={path}", "n_per_class=2",
                                 f"out={tmp_path / 'out'}")
    assert code == 2 and len(error_lines(stderr)) == 1 and message in stderr, stderr
    np.save(tmp_path / "none.npy", np.ones((0, 64), np.float32))
    code, _, stderr = synthesize(f"generator={trained['export']}", f"semantics={tmp_path / 'none.npy'}",
                                 "n_per_class=2", f"out={tmp_path / 'out'}")
    assert code == 2 and "no classes in it" in stderr, stderr
    # text or complex numbers in a .npy: refused, not a traceback (text) or silently made real (complex)
    for name, array in (("text.npy", np.array([["a"] * 64])), ("complex.npy", np.ones((1, 64), np.complex64))):
        np.save(tmp_path / name, array)
        code, _, stderr = synthesize(f"generator={trained['export']}", f"semantics={tmp_path / name}",
                                     "n_per_class=2", f"out={tmp_path / 'out'}")
        assert code == 2 and len(error_lines(stderr)) == 1 and "must hold a numeric array" in stderr, stderr
    assert not (tmp_path / "out").exists()


def test_eval_and_synthesize_on_cuda_without_a_usable_gpu_are_one_line_errors(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    proc = zsl_eval(tmp_path, f"generator={trained['export']}", "device=cuda")
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: device=cuda: ") and "use device=cpu" in lines[0]
    assert not (tmp_path / "eval" / "results.json").exists()
    code, _, err = synthesize(f"generator={trained['export']}", f"semantics={tmp_path / 'new.csv'}",
                              "n_per_class=2", f"out={tmp_path / 'synthetic'}", "device=cuda")
    assert code == 2 and error_lines(err) == lines, err  # the same line: same check, same fix
    assert not (tmp_path / "synthetic").exists()


@pytest.mark.parametrize("overrides, message", [
    ([], "no generator given: zsl-eval generator=<run dir>/generator"),
    (["syn_num=0"], "`syn_num` must be an integer >= 1, got 0"),
    (["seed=-1"], "`seed` must be an integer >= 0, got -1"),
    (["device=tpu"], "`device` must be cpu, cuda or cuda:<index>, got 'tpu'"),
    (["classifier_from_export=maybe"], "`classifier_from_export` must be true or false"),
])
def test_eval_bad_settings_are_one_line(trained, tmp_path, monkeypatch, overrides, message):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    proc = zsl_eval(tmp_path, *([f"generator={trained['export']}"] if overrides else []), *overrides)
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "eval" / "results.json").exists()


def test_eval_refuses_an_exported_bf16_classifier_without_bf16_hardware(trained, tmp_path, monkeypatch):
    import zsl_gen.runtime

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(zsl_gen.runtime, "native_bf16", lambda device="cpu": False)
    proc = zsl_eval(tmp_path, f"generator={trained['export']}", "classifier.precision=bf16",
                    "classifier_from_export=false")
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "classifier.precision=bf16: this CPU has no bfloat16 units" in lines[0]
    assert "use classifier.precision=fp32, or add allow_slow_bf16=true" in lines[0]
    assert not (tmp_path / "eval" / "results.json").exists()
    # an export whose classifier ran in bf16: the remedy is not to take the export's classifier settings
    meta_path = trained["export"] / "generator.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    assert meta["classifier"]["precision"] == "fp32"
    copy = Path(shutil.copytree(trained["export"], tmp_path / "bf16_export"))
    meta["classifier"]["precision"] = "bf16"
    rewrite_export_meta(copy, meta)
    proc = zsl_eval(tmp_path, f"generator={copy}")
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "add classifier.precision=fp32" in lines[0]
    proc = zsl_eval(tmp_path, f"generator={copy}", "classifier.precision=fp32")  # that fix works
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["config"]["classifier"]["precision"] == "fp32"
    assert results["config"]["classifier"]["epochs"] == meta["classifier"]["epochs"] == 2  # the rest: exported


def test_written_files_and_directories_get_the_umasks_permissions(trained, new_classes, tmp_path):
    # temp-file-and-rename must not leave mkstemp's 0600 / mkdtemp's 0700 behind (others could not read them)
    mask = os.umask(0o022)
    try:
        out = tmp_path / "syn"
        assert synthesize(f"generator={trained['export']}", f"semantics={new_classes['csv']}", "n_per_class=2",
                          f"out={out}")[0] == 0
        from zsl_gen.results import write_json_atomic

        write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o755
    # safetensors writes its file 0600: the export's weights must be as readable as the yaml beside it
    weights, meta = trained["export"] / "generator.safetensors", trained["export"] / "generator.yaml"
    assert weights.stat().st_mode & 0o777 == meta.stat().st_mode & 0o777 != 0o600
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert trained["export"].stat().st_mode & 0o777 == 0o777 & ~mask  # zsl-train's export, the session's umask


def test_the_python_api_refuses_bad_class_vectors_and_devices_in_one_message(trained, monkeypatch):
    from zsl_gen.errors import ConfigError, DataError

    generator = zsl_gen.load_generator(trained["export"])
    vectors = raw_test_semantics(trained["run"])[0][:2]
    for bad, message in ((np.array([["a"] * 64]), "got an array of dtype <U1"),
                         ([[1.0] * 64, [1.0] * 3], "class vectors for this generator"),
                         (vectors.astype(np.complex64), "got an array of dtype complex64"),
                         (torch.ones(2, 64, dtype=torch.complex64), "got a torch.complex64 tensor"),
                         (vectors[:, :10], "got shape (2, 10)")):
        for prepared in (False, True):  # prepared vectors skip the preprocessing, never the checks
            with pytest.raises(DataError) as err:
                generator.synthesize(bad, 2, prepared=prepared)
            assert message in str(err.value) and "\n" not in str(err.value)
    nan = vectors.copy()
    nan[1, 3] = np.nan
    with pytest.raises(DataError, match="NaN or Inf"):
        generator.synthesize(nan, 2, prepared=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device=cuda: "):
        zsl_gen.load_generator(trained["export"], device="cuda")


def test_eval_refuses_unseen_classes_the_generator_was_trained_on(trained, tmp_path, monkeypatch):
    """A split whose unseen classes include the export's seen classes would score trained classes as unseen."""
    from dataclasses import replace

    from zsl_gen.data.byo import save_byo
    from zsl_gen.pipeline import load_dataset

    monkeypatch.setenv("WANDB_MODE", "disabled")
    raw = load_dataset(OmegaConf.load(trained["run"] / ".hydra" / "config.yaml").dataset)
    seen = raw.seen_classes
    swapped_unseen = np.flatnonzero(np.isin(raw.labels, raw.unseen_classes) | (raw.labels == seen[0]))
    keep = np.setdiff1d(np.arange(raw.labels.size), swapped_unseen)
    locs = {"trainval": np.intersect1d(raw.locs["trainval"], keep), "test_seen": np.intersect1d(raw.locs["test_seen"], keep),
            "test_unseen": swapped_unseen}
    save_byo(replace(raw, locs=locs), tmp_path / "swapped")
    proc = zsl_eval(tmp_path, f"generator={trained['export']}", "dataset=byo", f"data_dir={tmp_path / 'swapped'}")
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert f"1 of dataset {raw.name}'s unseen classes ({raw.class_names[seen[0]]!r}) are classes the generator" in lines[0]
    assert not (tmp_path / "eval" / "results.json").exists()
    # another dataset whose classes only share the placeholder names (class_000, ...): other vectors, no leak
    proc = zsl_eval(tmp_path / "other", f"generator={trained['export']}", "dataset.synthetic.seed=1")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_eval_syn_num_sets_cadavaes_latent_count_and_records_what_ran(tmp_path, monkeypatch):
    """CADA-VAE's classifier draws n_latent_unseen latents per unseen class: syn_num is that count."""
    from zsl_gen.cli.train import main

    monkeypatch.setenv("WANDB_MODE", "disabled")
    proc = run_app(main, ["zsl-train", f"hydra.run.dir={tmp_path / 'run'}", "generator=cadavae", "generator.epochs=1",
                          "classifier.epochs=1", "generator.syn_num=20", "generator.system.n_latent_seen=20",
                          "selections=[paper]", "logger=none"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sizes = {}
    import zsl_gen.eval

    real = zsl_gen.eval.train_and_evaluate
    monkeypatch.setattr(zsl_gen.eval, "train_and_evaluate",
                        lambda inputs, *a, **k: sizes.setdefault(len(sizes), len(inputs.train_y)) and real(inputs, *a, **k))
    for run, extra in (("default", []), ("ten", ["syn_num=10"])):
        proc = run_app(__import__("zsl_gen.cli.evaluate", fromlist=["main"]).main,
                       ["zsl-eval", f"hydra.run.dir={tmp_path / run}", f"generator={tmp_path / 'run' / 'generator'}",
                        *extra], tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    default, ten = (json.loads((tmp_path / r / "results.json").read_text())["protocol"]["syn_num"]
                    for r in ("default", "ten"))
    assert (default, ten) == (20, 10)
    assert sizes[0] - sizes[1] == 10 * 10  # 10 unseen classes, 10 latents fewer each
    # its reparameterised sampling, too, is float32 and seeded whatever the caller's default dtype
    generator = zsl_gen.load_generator(tmp_path / "run" / "generator")
    vectors = generator.class_semantics[:2]
    expected = generator.synthesize(vectors, 3, seed=1, prepared=True)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = zsl_gen.load_generator(tmp_path / "run" / "generator").synthesize(vectors, 3, seed=1, prepared=True)
    finally:
        torch.set_default_dtype(old)
    assert got.dtype == torch.float32 and torch.equal(got, expected)


def test_an_export_never_replaces_a_directory_holding_other_files(trained, tmp_path):
    from zsl_gen.errors import ConfigError
    from zsl_gen.export import export_generator

    generator = zsl_gen.load_generator(trained["export"])
    (tmp_path / "generator").mkdir()
    (tmp_path / "generator" / "my_notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="holds other files than an export \\(my_notes.txt\\)"):
        export_generator(generator.system, None, tmp_path / "generator")  # refused before the data is read
    assert (tmp_path / "generator" / "my_notes.txt").read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["generator"]  # no temporary directory left behind


def test_synthesize_reads_quoted_csv_cells_and_a_padded_classes_txt(trained, new_classes, tmp_path):
    import csv as csv_module

    quoted = tmp_path / "quoted.csv"  # R's write.csv / Python's QUOTE_NONNUMERIC: names in quotes, one with a comma
    names = ["okapi", "zebra, plains", "narwhal"]
    with quoted.open("w", newline="") as handle:
        writer = csv_module.writer(handle, quoting=csv_module.QUOTE_NONNUMERIC)
        for name, row in zip(names, new_classes["vectors"]):
            writer.writerow([name, *map(float, row)])
    padded = tmp_path / "padded"  # classes.txt with padded names and a trailing blank line, as load_byo accepts
    padded.mkdir()
    np.save(padded / "semantics.npy", new_classes["vectors"])
    (padded / "classes.txt").write_text(" okapi\nquagga \nnarwhal\n\n")
    for source, out, expected in ((quoted, "q", names), (padded, "p", ["okapi", "quagga", "narwhal"])):
        code, _, stderr = synthesize(f"generator={trained['export']}", f"semantics={source}", "n_per_class=2",
                                     f"out={tmp_path / out}")
        assert code == 0, stderr
        assert (tmp_path / out / "classes.txt").read_text().splitlines() == expected
        np.testing.assert_array_equal(np.load(tmp_path / out / "semantics.npy"), new_classes["vectors"])
    bad = tmp_path / "bad.csv"
    bad.write_text('"okapi,1,2\n')  # an unclosed quote
    code, _, stderr = synthesize(f"generator={trained['export']}", f"semantics={bad}", "n_per_class=2",
                                 f"out={tmp_path / 'b'}")
    assert code == 2 and len(error_lines(stderr)) == 1 and "bad.csv" in stderr, stderr


def leftovers(parent: Path, out: str) -> list[str]:
    """Hidden temp dirs zsl-synthesize left beside ``parent / out``."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{out}."))


def test_synthesize_keeps_files_put_into_out_while_it_ran_and_the_earlier_output(trained, new_classes, tmp_path,
                                                                                 monkeypatch):
    import zsl_gen.export

    common = (f"generator={trained['export']}", f"semantics={new_classes['csv']}", "n_per_class=2")
    out = tmp_path / "syn"
    assert synthesize(*common, f"out={out}")[0] == 0
    earlier = np.load(out / "features.npy")
    real = zsl_gen.export.Generator.synthesize

    def meanwhile(self, *args, **kwargs):  # a user saves notes into out= while the features are made
        (out / "my_notes.txt").write_text("mine")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(zsl_gen.export.Generator, "synthesize", meanwhile)
    code, _, stderr = synthesize(*common[:2], "n_per_class=3", f"out={out}")
    assert code == 2 and len(error_lines(stderr)) == 1 and "my_notes.txt" in stderr, stderr
    assert (out / "my_notes.txt").read_text() == "mine" and np.array_equal(np.load(out / "features.npy"), earlier)
    assert leftovers(tmp_path, "syn") == []


def test_synthesize_cleans_up_on_a_full_disk_and_on_sigterm(trained, new_classes, tmp_path, monkeypatch):
    import os as os_module
    import signal

    import zsl_gen.cli.synthesize as cli

    common = (f"generator={trained['export']}", f"semantics={new_classes['csv']}", "n_per_class=2")
    out = tmp_path / "syn"
    assert synthesize(*common, f"out={out}")[0] == 0
    earlier = np.load(out / "features.npy")
    real_save = np.save

    def short_write(path, array, *args, **kwargs):  # numpy's error for a full disk: no file name, no errno
        if Path(path).name == "labels.npy":
            raise OSError("30720000 requested and 5119968 written")
        return real_save(path, array, *args, **kwargs)

    monkeypatch.setattr(cli.np, "save", short_write)
    code, _, stderr = synthesize(*common[:2], "n_per_class=3", f"out={out}")
    assert code == 2 and len(error_lines(stderr)) == 1 and "Traceback" not in stderr, stderr
    assert f"out={out}: writing the output failed (30720000 requested and 5119968 written); check the free " \
           "space" in stderr
    assert np.array_equal(np.load(out / "features.npy"), earlier) and leftovers(tmp_path, "syn") == []

    def terminated(path, array, *args, **kwargs):  # `kill <pid>` (a batch system's time limit) mid-write
        real_save(path, array, *args, **kwargs)
        os_module.kill(os_module.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli.np, "save", terminated)
    before = signal.getsignal(signal.SIGTERM)
    code, _, _ = synthesize(*common[:2], "n_per_class=3", f"out={out}")
    assert code == 128 + signal.SIGTERM and signal.getsignal(signal.SIGTERM) == before
    assert np.array_equal(np.load(out / "features.npy"), earlier) and leftovers(tmp_path, "syn") == []


def test_the_api_gives_float32_seeded_features_whatever_the_default_dtype(trained):
    generator = zsl_gen.load_generator(trained["export"])
    vectors = raw_test_semantics(trained["run"])[0][:3]
    expected = generator.synthesize(vectors, 4, seed=2)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        again = zsl_gen.load_generator(trained["export"])
        got = again.synthesize(vectors, 4, seed=2)
    finally:
        torch.set_default_dtype(old)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert all(p.dtype == torch.float32 for p in again.system.parameters())


def test_the_apis_preprocessing_equals_trainings(trained):
    from zsl_gen.data.protocol import l2_rows
    from zsl_gen.export import unscale

    generator = zsl_gen.load_generator(trained["export"])
    generator.meta["preprocessing"]["semantics"]["l2"] = True  # as an export of a dataset.l2_semantics=true run
    rng = np.random.default_rng(0)
    vectors = rng.random((200, 64)).astype(np.float32) * rng.choice([1e-3, 1.0, 7.0], (200, 1)).astype(np.float32)
    vectors[5] = 0.0  # an all-zero row stays zero
    assert np.array_equal(generator.prepare_semantics(vectors).numpy(), l2_rows(vectors))
    scaled = generator.synthesize(vectors[:2], 3, seed=0, prepared=True)
    raw = unscale(scaled, generator.meta["preprocessing"])  # tensors and arrays alike
    assert np.array_equal(unscale(scaled.numpy(), generator.meta["preprocessing"]), raw.numpy())
    assert torch.equal(raw, generator.synthesize(vectors[:2], 3, seed=0, prepared=True, space="raw"))
    with pytest.raises(CheckpointError, match=r"do not fit in cpu memory"):
        generator.synthesize(vectors[:2], 2**62)  # too many rows to count: the same one line


def test_eval_records_and_logs_its_warnings_and_takes_a_numeric_directory_name(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    shutil.copytree(trained["export"], tmp_path / "2024")  # `generator=2024` parses as a number
    proc = zsl_eval(tmp_path, "generator=2024", "dataset.name=CUB")  # the simulated set labelled as CUB
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["generator"]["path"] == str((tmp_path / "2024").resolve())
    (warning,) = results["warnings"]
    assert warning.startswith("dataset CUB: 30 seen / 10 unseen classes, but CUB has 150 / 50")
    assert warning == results["dataset"]["warning"] and warning in (tmp_path / "eval" / "evaluate.log").read_text()
    from zsl_gen.cli.report import main as report

    report([str(tmp_path / "eval")])  # zsl-report's notes see it as a zsl-train run's
