"""A fast dev run of every `experiment=*` recipe through the real train pipeline.

Each recipe runs on a tiny stand-in in the real on-disk format of its dataset (xlsa17 `.mat` files with
the dataset's semantic dimension and semantics file), with Lightning's fast_dev_run (one batch) and a
one-epoch final classifier: the recipe composes, every hyper-parameter reaches its system, both
protocols run (for the CUB recipes; the test protocol for the others), and a generator is exported. Numbers are not checked here (see test_systems_*).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from zsl_gen.data import make_synthetic, save_xlsa17
from zsl_gen.pipeline import run

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
# dataset config -> (semantic dim, semantics file)
DATASETS = {"cub": (312, "att_splits.mat"), "cub_sent": (1024, "sent_splits.mat"), "sun": (102, "att_splits.mat"),
            "awa1": (85, "att_splits.mat"), "awa2": (85, "att_splits.mat"), "apy": (64, "att_splits.mat"),
            "flo": (1024, "att_splits.mat")}


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, Path]:
    """One tiny xlsa17 directory per dataset config."""
    root = tmp_path_factory.mktemp("xlsa17")
    dirs = {}
    for name, (dim, semantics_file) in DATASETS.items():
        raw = make_synthetic(n_classes=10, n_unseen=3, n_val_classes=2, semantic_dim=dim, feature_dim=24,
                             samples_per_class=6, seed=1, name=name.upper())
        raw.semantic_space = "sent" if dim == 1024 else "att"  # as the file a dataset config reads records it
        out = save_xlsa17(raw, root / name)
        if semantics_file != "att_splits.mat":
            shutil.move(out / "att_splits.mat", out / semantics_file)
        dirs[name] = out
    return dirs


def test_every_generator_has_an_experiment_for_every_dataset():
    generators = {p.stem for p in (REPO / "conf" / "generator").glob("*.yaml")} - {"eszsl"}
    assert set(EXPERIMENTS) == {f"{g}_{d}" for g in generators for d in DATASETS}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_fast_dev_run(experiment, stand_ins, tmp_path):
    dataset = experiment.split("_", 1)[1]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"experiment={experiment}", f"data_dir={stand_ins[dataset]}", "debug=fdr", "logger=none",
            f"paths.output_dir={tmp_path}", "generator.syn_num=20", "classifier.batch_size=16",
            "generator.system.batch_size=16",
            # both protocols for one recipe per generator; the test protocol alone elsewhere (suite time)
            "selections=[paper,val]" if dataset == "cub" else "selections=[paper]"])
    assert cfg.dataset.name.lower() == dataset.split("_")[0]
    results = run(cfg, tmp_path)
    assert set(results["results"]) == ({"paper", "val"} if dataset == "cub" else {"paper"})
    assert results["dataset"]["semantic_dim"] == DATASETS[dataset][0]
    assert Path(results["generator_export"], "generator.safetensors").is_file()
    assert json.loads((tmp_path / "results.json").read_text())["method"] == cfg.generator.name
    # each method's paper protocol: CADA-VAE reports its last epoch, f-CLSWGAN the best classifier epoch of its
    # last generator epoch, the others the best epoch on test
    rule = {"cadavae": "last", "fclswgan": "best_at_last_epoch"}.get(cfg.generator.name, "best")
    assert results["protocol"]["paper_selection"] == results["results"]["paper"]["rule"] == rule
    assert results["results"]["paper"]["optimistic"] is (rule != "last")
