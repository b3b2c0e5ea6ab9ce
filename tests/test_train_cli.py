"""`zsl-train` end to end: the console script as a user runs it, results.json contents, bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cli_helpers import TINY, zsl_train
from data_helpers import real_file

REPO = Path(__file__).resolve().parents[1]


def zsl_train_subprocess(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """The real console script in a fresh process (used once: the installed entry point works)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["zsl-train", f"hydra.run.dir={tmp_path / 'run'}", *overrides], capture_output=True,
                          text=True, cwd=tmp_path, timeout=600, env={**os.environ, "WANDB_MODE": "disabled"})


def read_results(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "run" / "results.json").read_text())


def test_eszsl_on_synthetic_writes_complete_results(tmp_path):
    proc = zsl_train_subprocess(tmp_path, "generator=eszsl")
    assert proc.returncode == 0, proc.stderr
    results = read_results(tmp_path)
    assert results["method"] == "eszsl" and results["seed"] == 0
    assert results["dataset"]["name"] == "synthetic" and results["dataset"]["semantic_space"] == "att"
    assert len(results["dataset"]["arrays_sha256"]) == 64
    assert set(results["results"]) == {"paper", "val"}
    for selection in results["results"].values():
        assert set(selection["gzsl"]) == {"S", "U", "H"} and set(selection["zsl"]) == {"T1"}
        assert all(0 <= v <= 100 for v in [*selection["gzsl"].values(), selection["zsl"]["T1"]])
    # paper is the best over everything measured on test, so never below the val-selected test number
    assert results["results"]["paper"]["gzsl"]["H"] >= results["results"]["val"]["gzsl"]["H"]
    assert results["results"]["paper"]["optimistic"] and not results["results"]["val"]["optimistic"]
    assert {"torch", "pytorch_lightning", "hydra", "zsl_gen", "cpu"} <= set(results["versions"])
    assert results["versions"]["torch_threads"] == torch.get_num_threads()  # bf16 rounding depends on it
    assert results["versions"]["cuda"] == torch.version.cuda and results["device"] == "cpu"
    if (REPO / ".git").exists():  # a git checkout records the commit and whether tracked files had edits
        assert len(results["versions"]["git_commit"]) == 40
        assert isinstance(results["versions"]["git_dirty"], bool)
    assert results["config"]["generator"]["name"] == "eszsl"
    assert "paper*" in proc.stdout and "val" in proc.stdout  # the printed summary
    curves = json.loads((tmp_path / "run" / "curves.json").read_text())
    assert set(curves) == {"val", "test"} and len(curves["test"]["rows"]) == 49
    prep = json.loads((tmp_path / "run" / "preprocessing.json").read_text())
    assert prep["features"]["kind"] == "minmax"


def test_a_wheel_carries_the_configs_and_trains_without_the_repository(tmp_path):
    # `pip install .` (not -e): the wheel holds conf/ as zsl_gen/conf and every subpackage pyproject lists
    from setuptools import find_packages

    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's tomllib reads pyproject.toml")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    # conf/ and each config-group folder in it (a new group left out would warn at every build)
    groups = {"zsl_gen.conf" + ".".join(["", *d.relative_to(REPO / "conf").parts])
              for d in [REPO / "conf", *(REPO / "conf").rglob("*")] if d.is_dir()}
    assert set(find_packages(str(REPO), include=["zsl_gen*"])) | groups == listed
    # built from a copy of what the build reads: a build in the checkout writes build/ there, whose leftovers
    # (a config since renamed) setuptools would put into every later wheel
    source = tmp_path / "source"
    for part in ("zsl_gen", "conf"):
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, source / part)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("zsl_gen-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)  # what pip install puts into site-packages
    configs = {p.relative_to(REPO / "conf") for p in (REPO / "conf").rglob("*.yaml")}
    assert {p.relative_to(site / "zsl_gen" / "conf") for p in (site / "zsl_gen" / "conf").rglob("*.yaml")} == configs
    proc = subprocess.run([sys.executable, "-m", "zsl_gen.cli.train", "generator=eszsl", "dataset.synthetic.n_classes=20",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["config"]["generator"]["name"] == "eszsl"
    probe = "import zsl_gen, zsl_gen.config as c; print(zsl_gen.__file__, c.CONF_DIR)"
    where = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(site)}).stdout.split()
    assert where == [str(site / "zsl_gen" / "__init__.py"), str(site / "zsl_gen" / "conf")]


def test_a_copy_of_the_package_inside_another_repository_records_no_commit_of_it(tmp_path):
    # a non-editable install into a repository's .venv: that repository's HEAD is not the code that ran
    repo = tmp_path / "repo"
    site = repo / ".venv" / "lib"
    shutil.copytree(REPO / "zsl_gen", site / "zsl_gen", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / ".gitignore").write_text(".venv/\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for args in (["init", "-q"], ["add", ".gitignore"], ["commit", "-q", "-m", "x"]):
        subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)
    probe = "from zsl_gen.results import versions; import zsl_gen, json; print(json.dumps([zsl_gen.__file__, versions()]))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    where, info = json.loads(proc.stdout.splitlines()[-1])
    assert where.startswith(str(site)) and "git_commit" not in info and "git_dirty" not in info
    assert info["zsl_gen"]


def test_same_seed_same_numbers_other_seed_other_split(tmp_path):
    a = zsl_train(tmp_path / "a", "generator=eszsl", "selections=[val]")
    b = zsl_train(tmp_path / "b", "generator=eszsl", "selections=[val]")
    c = zsl_train(tmp_path / "c", "generator=eszsl", "selections=[val]", "seed=1")
    assert a.returncode == b.returncode == c.returncode == 0, a.stderr + c.stderr
    ra, rb, rc = (read_results(tmp_path / k)["results"]["val"] for k in "abc")
    assert ra == rb
    assert ra["val_scores"] != rc["val_scores"]  # the seeded val-seen hold-out differs


@pytest.mark.parametrize("override, message", [
    ("eval_every=0", "config field `eval_every` must be an integer >= 1"),
    ("selections=[best]", "config field `selections` must be a non-empty subset"),
    ("generator.epochs=-1", "config field `generator.epochs` must be an integer >= 1"),
    ("classifier.lr=0", "lr"),
    ("dataset.feature_scaling=zscore", "feature_scaling"),
    ("keep_freed_memory=maybe", "config field `keep_freed_memory` must be true or false"),
    ("paper_selection=final", "config field `paper_selection` must be one of ['best', 'best_at_last_epoch', 'last']"),
    ("offload_optimizer_state_mb=-1", "config field `offload_optimizer_state_mb` must be a number >= 0"),
])
def test_bad_config_values_are_one_clear_line(tmp_path, override, message):
    generator = "generator=eszsl" if "generator." not in override and "classifier" not in override else "generator=cvae"
    proc = zsl_train(tmp_path, generator, override)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "results.json").exists()
    assert message in (tmp_path / "run" / "train.log").read_text()  # the log file has the error too


@pytest.mark.parametrize("generator", ["cvae", "cadavae"])
def test_a_batch_size_drop_last_cannot_fill_is_refused_before_the_generator_trains(tmp_path, monkeypatch,
                                                                                  generator):
    from zsl_gen.systems.cadavae import CADAVAE
    from zsl_gen.systems.cvae import ConditionalVAE

    def no_training(*args, **kwargs):
        raise AssertionError("the generator trained before the classifier's settings were checked")

    monkeypatch.setattr({"cvae": ConditionalVAE, "cadavae": CADAVAE}[generator], "training_step", no_training)
    # 50 synthetic features per unseen class (CADA-VAE: 50 latents): the val split, trained first, holds out 8
    # unseen classes, which give 400 for the ZSL classifier, fewer than one batch of 450
    proc = zsl_train(tmp_path, f"generator={generator}", "generator.epochs=1", "generator.syn_num=50",
                     "classifier.drop_last=true", "classifier.batch_size=450")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "classifier.drop_last=true with classifier.batch_size=450 leaves no full batch of the 400 " \
           "training samples" in proc.stderr
    assert "Traceback" not in proc.stderr and "trained before" not in proc.stderr
    assert not list((tmp_path / "run").rglob("*.ckpt")) and not (tmp_path / "run" / "csv").exists()


def test_missing_dataset_files_name_the_file_and_the_fix(tmp_path):
    proc = zsl_train(tmp_path, "generator=eszsl", "dataset=cub", f"data_dir={tmp_path / 'nowhere'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nowhere" in proc.stderr and "zsl-data download" in proc.stderr


@pytest.mark.slow
def test_cub_real_semantics_with_simulated_features(tmp_path):
    att = real_file("CUB")
    data_dir = tmp_path / "CUB"
    sim = subprocess.run([sys.executable, "-m", "zsl_gen.cli.data", "simulate", "--att-splits", str(att),
                          "--out", str(data_dir), "--feature-dim", "2048"], capture_output=True, text=True)
    assert sim.returncode == 0, sim.stderr
    proc = zsl_train(tmp_path, "generator=eszsl", "dataset=cub", f"data_dir={data_dir}",
                     "generator.gammas_exp=[0,1]", "generator.lambdas_exp=[0,1]")
    assert proc.returncode == 0, proc.stderr
    results = read_results(tmp_path)
    ds = results["dataset"]
    assert (ds["name"], ds["n_seen"], ds["n_unseen"], ds["semantic_dim"]) == ("CUB", 150, 50, 312)
    assert ds["split_sizes"]["trainval"] == 7057 and ds["split_sizes"]["test_unseen"] == 2967
    assert {Path(p).name for p in ds["files"]} == {"res101.mat", "att_splits.mat"}
    assert all(len(h) == 64 for h in ds["files"].values())


def test_calibrated_stacking_gamma_is_chosen_on_val(tmp_path):
    proc = zsl_train(tmp_path, "generator=cvae", "generator.epochs=2", "generator.system.hidden_dim=64",
                     "classifier.epochs=3", "classifier.calibration=true", "classifier.calibration_gammas=[0.0,0.5,1.0]")
    assert proc.returncode == 0, proc.stderr
    results = read_results(tmp_path)
    val = results["results"]["val"]
    assert val["gzsl_chosen"]["gamma"] in (0.0, 0.5, 1.0)
    curves = json.loads((tmp_path / "run" / "curves.json").read_text())
    assert curves["test"]["gammas"] == [0.0, 0.5, 1.0]
    h = curves["val"]["H"]  # (epochs, classifier epochs, gammas): the chosen gamma maximises val H
    best = max(v for epoch in h for row in epoch for v in row)
    assert round(best, 2) == val["val_scores"]["H"]


def test_precision_bf16_switches_generator_and_classifier(tmp_path):
    # allow_slow_bf16: the switch itself is under test, on any CPU (CI's may have no bf16 units)
    proc = zsl_train(tmp_path, *TINY, "precision=bf16", "selections=[paper]", "allow_slow_bf16=true")
    assert proc.returncode == 0, proc.stderr
    config = read_results(tmp_path)["config"]
    assert config["trainer"]["precision"] == "bf16-mixed" and config["classifier"]["precision"] == "bf16"
    assert 0 <= read_results(tmp_path)["results"]["paper"]["gzsl"]["H"] <= 100


@pytest.mark.parametrize("overrides, named", [
    (["precision=bf16"], "trainer.precision=bf16-mixed and classifier.precision=bf16: this CPU has no bfloat16"),
    (["classifier.precision=bf16"], "error: classifier.precision=bf16: this CPU has no bfloat16 units"),
    (["trainer.precision=bf16-mixed"], "error: trainer.precision=bf16-mixed: this CPU"),
])
def test_bf16_without_bf16_hardware_is_refused_in_one_line(tmp_path, monkeypatch, overrides, named):
    import zsl_gen.runtime

    monkeypatch.setattr(zsl_gen.runtime, "native_bf16", lambda device="cpu": False)
    proc = zsl_train(tmp_path, *TINY, *overrides)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0], proc.stderr
    assert "use precision=fp32" in lines[0] and "allow_slow_bf16=true" in lines[0]
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize("system, named", [
    ({"kl_start": "abc"}, "`generator.system.kl_start` must be an epoch, an integer >= 0, got 'abc'"),
    ({"align_end": 2.5}, "`generator.system.align_end` must be an epoch"),
    ({"cross_start": -1}, "`generator.system.cross_start` must be an epoch"),
    ({"kl_start": 50, "kl_end": 10}, "`generator.system.kl_start`=50 and `kl_end`=10: the kl warm-up must not end "
                                     "before it starts"),
])
def test_cadavaes_warmup_windows_are_checked(system, named):
    from zsl_gen.config import check_generator_system
    from zsl_gen.errors import ConfigError

    defaults = {"kl_start": 0, "kl_end": 93, "cross_start": 21, "cross_end": 75, "align_start": 6, "align_end": 22}
    cfg = OmegaConf.create({"generator": {"name": "cadavae", "system": {**defaults, **system}}})
    with pytest.raises(ConfigError, match=re.escape(named)):
        check_generator_system(cfg)
    check_generator_system(OmegaConf.create({"generator": {"name": "cadavae", "system": defaults}}))
    # a window of no width is a step to the full weight (losses.cada.warmup)
    check_generator_system(OmegaConf.create({"generator": {"name": "cadavae", "system": {**defaults, "kl_end": 0}}}))


def test_trainer_settings_lightning_aliases_and_device_counts(monkeypatch):
    import torch

    from zsl_gen.config import check_trainer_settings, process_count

    for precision in ("32-true", "32", 32, "bf16-mixed", "bf16"):  # bf16: Lightning's alias of bf16-mixed
        check_trainer_settings(OmegaConf.create({"trainer": {"precision": precision}}))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [process_count(v, "gpu") for v in (1, "1", [0], "0,1", [0, 1, 2], -1, "-1", "auto", 3)] == \
        [1, 1, 1, 2, 3, 4, 4, 4, 3]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert process_count(-1, "gpu") == 1 and process_count("auto", "gpu") == 1  # one GPU: one process
    assert process_count("auto", "cpu") == 1 and process_count(-1, "cpu") == (os.cpu_count() or 1)


def test_the_recorded_device_is_the_one_the_accelerator_trains_on(monkeypatch):
    import torch

    from zsl_gen.config import trainer_device

    def device(accelerator):
        return trainer_device(OmegaConf.create({"trainer": {"accelerator": accelerator}}))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [device(a) for a in ("gpu", "cuda", "auto", "cpu")] == ["cuda", "cuda", "cuda", "cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device("auto") == "cpu" and trainer_device(OmegaConf.create({"trainer": {}})) == "cpu"


@pytest.mark.parametrize("overrides, named", [
    (["generator.system.lr=0"], "`generator.system.lr` must be a number > 0"),
    (["generator.system.batch_size=0"], "`generator.system.batch_size` must be an integer >= 1, got 0"),
    (["generator.system.hidden_dim=abc"], "`generator.system.hidden_dim` must be an integer >= 1, got 'abc'"),
    (["generator.system.beta1=2"], "`generator.system.beta1` must be a number in [0, 1)"),
    (["generator=fclswgan", "generator.system.lambda_gp=nan"], "`generator.system.lambda_gp` must be a finite"),
    (["generator=fclswgan", "generator.system.critic_steps=0"], "`generator.system.critic_steps` must be an integer"),
    (["generator.system.encoder_bottleneck=maybe"], "`generator.system.encoder_bottleneck` must be true or false"),
    # a constructor's own check, and Lightning's, come through Hydra's wrapper as one line naming the node
    (["generator.system.output_activation=foo"], "generator.system: output_activation must be one of"),
    (["trainer.devices=0"], "trainer: pytorch_lightning.Trainer cannot be built from these settings"),
    (["classifier.calibration=maybe"], "`classifier.calibration` must be true or false, got 'maybe'"),
    (["classifier.calibration_gammas=[nan]"], "`classifier.calibration_gammas` must be a list of finite numbers"),
    (["dataset.l2_semantics=1"], "`dataset.l2_semantics` must be true or false, got 1"),
    # the simulated features exceed 1: the VAE's binary cross-entropy needs [0, 1] (was a torch error)
    (["dataset.feature_scaling=none"], "the training features lie in [0, "),
    (["dataset.feature_scaling=none"], "reconstructs them with binary cross-entropy, which needs [0, 1], and "
                                       "dataset.feature_scaling=none keeps them as they are: set "
                                       "dataset.feature_scaling=minmax"),
    (["selections=paper"], "must be a list, got the string 'paper': write selections=[paper]"),
    # keys Hydra lets in with `+` (its own advice for a typo) that no code reads would be ignored
    (["+generator.epoch=3"], "`generator.epoch` is not a generator setting and would be ignored; did you mean "
                             "`generator.epochs`?"),
    (["+classifier.epoch=3"], "`classifier.epoch` is not a classifier setting"),
    (["+classifer.epochs=3"], "`classifer` is not a zsl-train setting and would be ignored; did you mean "
                              "`classifier`?"),  # what Hydra advises for the typo classifer.epochs=3
    (["+eval_evry=2"], "`eval_evry` is not a zsl-train setting and would be ignored; did you mean `eval_every`?"),
    (["+dataset.feature_scalng=none"], "`dataset.feature_scalng` is not a dataset setting"),
    (["+trainer.max_epochs=3"], "`trainer.max_epochs` is set by zsl-train itself and would be ignored; use "
                                "generator.epochs=<n>"),
    # the name selects code paths and labels the results: a free label would relabel the method or crash
    (["generator.name=myrun"], "`generator.name`='myrun' is not a generator zsl-gen has"),
    (["generator=fclswgan", "generator.name=cvae"], "but generator.system._target_=zsl_gen.systems.fclswgan.FCLSWGAN "
                                                    "(generator=fclswgan's)"),
    (["generator.name=eszsl"], "ESZSL has no generator network; use generator=eszsl"),
    (["generator=fclswgan", "trainer.devices='2'"], "with generator=fclswgan: its WGAN critic"),  # "2" as a string
    # settings that would cut the schedule behind the record's back, or that configure no loop of zsl-gen's
    (["+trainer.max_time=00:00:00:03"], "`trainer.max_time` is not used by zsl-gen: generator.epochs=<n> sets the "
                                        "schedule"),
    (["+trainer.max_steps=1"], "`trainer.max_steps` is not used by zsl-gen"),
    (["+trainer.check_val_every_n_epoch=2"], "`trainer.check_val_every_n_epoch` is not used by zsl-gen: eval_every"),
    (["+trainer.limit_train_batches=0"], "split=val: training ended after epoch 0 of 2 without diverging"),
    (["+trainer.strategy=ddp_spawn"], "trainer.strategy=ddp_spawn: the evaluations (and their records) would stay"),
    (["+trainer.strategy=ddp_notebook"], "trainer.strategy=ddp_notebook: the evaluations"),  # Lightning's ddp_fork
    (["generator=fclswgan", "+trainer.accumulate_grad_batches=2"], "trainer settings: "),  # manual optimisation
    (["+trainer.accumulate_grad_batches=0"], "`trainer.accumulate_grad_batches` must be an integer >= 1, got 0"),
    # without a launcher the process would wait forever for the other node
    (["+trainer.num_nodes=2"], "trainer.num_nodes=2 but this process was not started by a multi-node launcher"),
    (["trainer.precision=16-mixed"], "fp16 autocast is not supported: on a CPU Lightning silently runs bf16"),
    (["trainer.precision=bf16-true"], "`trainer.precision`='bf16-true': the networks would be cast but not the data"),
    (["trainer.precision=64"], "use precision=fp32 (32-true, the default) or precision=bf16"),
    (["trainer.deterministic=abc"], "`trainer.deterministic` must be true, false or warn, got 'abc'"),
    # whole numbers written as floats: refused with the integer to write (they failed deep in numpy and torch)
    (["seed=5.0"], "`seed` must be an integer in [0, 4294967295], got 5.0 (set it on the command line, e.g. seed=5)"),
    (["generator.syn_num=50.0"], "`generator.syn_num` must be an integer >= 1, got 50.0"),
    (["generator.system.hidden_dim=64.0"], "`generator.system.hidden_dim` must be an integer >= 1, got 64.0"),
    (["dataset.max_generator_epochs=-1"], "`dataset.max_generator_epochs` must be an integer >= 1, got -1"),
    (["dataset.max_generator_epochs=abc"], "`dataset.max_generator_epochs` must be an integer >= 1"),
    (["dataset.name=null"], "`dataset.name` must be a non-empty name, got None"),
    (["dataset.synthetic.seed=-1"], "`dataset.synthetic.seed` must be an integer in [0, 4294967295], got -1"),
    (["+dataset.synthetic.foo=1"], "`dataset.synthetic.foo` is not a simulator setting"),
    (["dataset.synthetic=null"], "`dataset.synthetic` must hold the simulator's settings"),
    (["dataset.synthetic.samples_per_class=2"], "every class has a single training sample for split=val"),
    (["selections=null"], "`selections` must be a list such as [paper,val], got None"),
    (["selections=5"], "`selections` must be a list such as [paper,val], got 5"),
])
def test_bad_generator_and_trainer_settings_are_one_line(tmp_path, monkeypatch, overrides, named):
    from zsl_gen.config import MULTI_NODE_ENV

    for name in MULTI_NODE_ENV:  # as a process started by hand, not by a cluster's launcher
        monkeypatch.delenv(name, raising=False)
    proc = zsl_train(tmp_path, *TINY, "logger=none", *overrides)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "[INFO]" not in line]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_trainer_setting_lightning_refuses_at_fit_leaves_no_logger_files(tmp_path):
    # Lightning checks gradient clipping against the manually optimised GAN only when fit starts
    proc = zsl_train(tmp_path, *TINY, "generator=fclswgan", "+trainer.gradient_clip_val=1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "Automatic gradient clipping is not supported for manual optimization" in proc.stderr
    assert not (tmp_path / "run" / "csv").exists()


def test_several_nodes_under_a_launcher_are_not_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "2")  # srun's: past the node check, to the next one
    proc = zsl_train(tmp_path, "generator=eszsl", "+trainer.num_nodes=2", "dataset.kind=bad")
    assert proc.returncode == 2 and "num_nodes" not in proc.stderr, proc.stderr[-2000:]
    assert "`dataset.kind` must be 'synthetic' or 'files'" in proc.stderr


@pytest.mark.parametrize("overrides, named", [
    (["generator=fclswgen"], "error: generator=fclswgen: no `fclswgen` in conf/generator/; did you mean "
                             "generator=fclswgan? the choices are cadavae, cvae, eszsl, fclswgan, fvaegan, tfvaegan"),
    (["-m", "dataset=cub,sunn"], "error: dataset=cub,sunn: no `sunn` in conf/dataset/; did you mean dataset=sun?"),
    (["experiment=fclswgan_cbu"], "did you mean experiment=fclswgan_cub?"),
    # Hydra's own advice for these is `+classifer.epochs=3`, a key no code would read
    (["classifer.epochs=3"], "error: classifer.epochs=3: `classifer` is not a setting of this command; did you "
                             "mean `classifier.epochs`?"),
    (["generator.epoch=3"], "error: generator.epoch=3: `generator.epoch` is not a generator setting; did you mean "
                            "`generator.epochs`?"),
    (["eval_evry=2"], "did you mean `eval_every`?"),
    (["generator=null"], "error: generator=null: the `generator` group cannot be left out (null); pick one of"),
    (["trainer=null"], "the `trainer` group cannot be left out"),
])
def test_typos_hydra_cannot_compose_are_one_line_before_hydra_starts(tmp_path, overrides, named):
    proc = zsl_train(tmp_path, *TINY, *overrides)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()  # refused before Hydra made the run directory


def test_the_override_check_leaves_valid_and_sweep_syntax_to_hydra(tmp_path):
    from zsl_gen.cli.common import check_overrides

    check_overrides(["-m", "generator=fclswgan,cvae", "experiment=null", "dataset=glob(*)", "seed=range(0,3)",
                     "generator.system.lr=1e-3", "+trainer.detect_anomaly=true", "~logger", "hydra.verbose=true",
                     "hydra/launcher=submitit_local", "paths.data_dir=/x", "--cfg", "job",
                     "generator@extra=cvae"], "train")
    check_overrides(["export=/some/dir", "classifier.epochs=3", "dataset=cub", "device=cpu"], "eval")
    with pytest.raises(SystemExit):
        check_overrides(["generator=x"], "eval")  # zsl-eval has no generator group (main turns it into export=)
    # configs from another directory, and Hydra commands without overrides, are Hydra's to check
    for argv in (["-cd", "/my/conf", "experiment=my_exp"], ["hydra.searchpath=[file:///my/conf]", "experiment=my_exp"],
                 ["-sc", "install=bash"]):
        check_overrides(argv, "train")


def test_trainer_gpu_without_a_usable_gpu_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a CI machine that has one
    proc = zsl_train(tmp_path, *TINY, "trainer=gpu")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: trainer.accelerator=gpu: "), proc.stderr
    assert "use trainer=cpu" in lines[0] and "MisconfigurationException" not in proc.stderr
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_bf16_hardware_check_passes_fp32_native_bf16_and_the_explicit_override(tmp_path, monkeypatch):
    import zsl_gen.runtime
    from zsl_gen.config import check_bf16_hardware
    from zsl_gen.errors import ConfigError

    cfg = OmegaConf.create({"trainer": {"precision": "bf16-mixed", "accelerator": "cpu"},
                            "classifier": {"precision": "bf16"}})
    asked = []
    monkeypatch.setattr(zsl_gen.runtime, "native_bf16", lambda device="cpu": asked.append(device) or False)
    with pytest.raises(ConfigError, match="this CPU has no bfloat16 units"):
        check_bf16_hardware(cfg)
    cfg.trainer.accelerator = "gpu"
    with pytest.raises(ConfigError, match="this GPU has no bfloat16 units"):
        check_bf16_hardware(cfg)
    assert asked == ["cpu", "cuda"]
    check_bf16_hardware(OmegaConf.merge(cfg, {"allow_slow_bf16": True}))  # the user's explicit choice
    check_bf16_hardware(OmegaConf.create({"trainer": {"precision": "32-true"}, "classifier": {"precision": "fp32"}}))
    with pytest.raises(ConfigError, match="`allow_slow_bf16` must be true or false"):
        check_bf16_hardware(OmegaConf.merge(cfg, {"allow_slow_bf16": "yes"}))
    monkeypatch.setattr(zsl_gen.runtime, "native_bf16", lambda device="cpu": True)
    check_bf16_hardware(cfg)


def test_native_bf16_follows_torchs_own_check():
    from zsl_gen.runtime import native_bf16

    assert native_bf16("cpu") == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert isinstance(native_bf16("cuda"), bool)


@pytest.mark.parametrize("generator", ["cvae", "tfvaegan", "cadavae"])
def test_offload_during_evaluation_changes_no_number(generator, tmp_path, monkeypatch):
    """During each evaluation the optimiser state, then the weights and the image features (as the
    evaluation stops reading them) wait in a file, here whatever their size, and come back bit for bit: the
    curves, the results and the exported weights equal those of a run that kept everything in memory.
    tf-VAEGAN keeps its decoder until the last feature map, CADA-VAE its encoders until the last latent; a read
    of anything moved would crash the run."""
    import yaml

    import zsl_gen.callbacks as callbacks
    from zsl_gen import runtime

    monkeypatch.setattr(runtime, "_OFFLOAD_MIN_BYTES", 0)  # every tensor, however small
    moved = []
    real = callbacks.evaluation_offload

    def counting(optimizers, *args, **kwargs):
        state = sum(t.numel() * t.element_size() for t in runtime.optimizer_state(optimizers))
        offload = real(optimizers, *args, **kwargs)
        moved.append((offload, state))
        return offload

    monkeypatch.setattr(callbacks, "evaluation_offload", counting)
    runs = {}
    # a third of the simulated samples: every tensor is offloaded whatever its size (_OFFLOAD_MIN_BYTES = 0)
    size = (("generator.epochs=2", "classifier.epochs=2", "generator.syn_num=50", "generator.system.latent_dim=8")
            if generator == "cadavae" else (*TINY, "generator.system.hidden_dim=128")) + (
        "dataset.synthetic.samples_per_class=20",)
    for flag in ("0", "null"):
        proc = zsl_train(tmp_path / flag, *size, f"generator={generator}", "selections=[paper]",
                         f"offload_optimizer_state_mb={flag}")
        assert proc.returncode == 0, proc.stderr
        run = tmp_path / flag / "run"
        runs[flag] = (read_results(tmp_path / flag)["results"], json.loads((run / "curves.json").read_text()),
                      yaml.safe_load((run / "generator" / "generator.yaml").read_text())["weights_sha256"])
        assert not [p for p in run.iterdir() if p.name.startswith("zsl-gen-offload")]
    # one evaluation per epoch, 2 epochs per run: the first run moved the state and more (weights and
    # features), the second nothing
    assert len(moved) == 4
    assert all(offload.moved_bytes > state > 0 for offload, state in moved[:2])
    assert [offload.moved_bytes for offload, _ in moved[2:]] == [0, 0]
    assert runs["0"] == runs["null"]


def test_each_split_reads_the_dataset_and_trains_without_the_raw_features(tmp_path, monkeypatch):
    """A run of both splits reads the dataset once per split and drops the raw features once the split's
    protocol data is built, and drops the val split's trained system before the test split trains: neither
    is alive beside a split's training (AWA2: 305 MB of features; tf-VAEGAN's weights and Adam state 0.8 GB).
    Each trained split's optimiser state goes as soon as its training ends."""
    import gc
    import weakref

    from zsl_gen import pipeline

    reads, systems, alive_at_training, state_left = [], [], [], []
    load, train = pipeline.load_dataset, pipeline.train_generator

    def load_dataset(ds):
        raw = load(ds)
        reads.append(weakref.ref(raw))
        return raw

    def train_generator(*args, **kwargs):
        gc.collect()
        alive_at_training.append((sum(ref() is not None for ref in reads),
                                  sum(ref() is not None for ref in systems)))
        trained = train(*args, **kwargs)
        systems.append(weakref.ref(trained.system))
        state_left.append(sum(len(opt.state) for opt in trained.system.trainer.optimizers))
        return trained

    monkeypatch.setattr(pipeline, "load_dataset", load_dataset)
    monkeypatch.setattr(pipeline, "train_generator", train_generator)
    out = zsl_train(tmp_path, *TINY)
    assert out.returncode == 0, out.stderr
    # val split, then test split: neither a raw dataset nor the val split's system (and its trainer's
    # optimiser state) is alive while the test split trains
    assert len(reads) == 2 and alive_at_training == [(0, 0), (0, 0)]
    # and once a split is trained its optimiser state (in its checkpoints) is dropped, before the export
    assert state_left == [0, 0]
    assert read_results(tmp_path)["dataset"]["arrays_sha256"]  # the record of the data both splits read


def test_a_dataset_that_changes_between_splits_is_one_clear_error(tmp_path, monkeypatch):
    from zsl_gen import pipeline

    load, calls = pipeline.load_dataset, []

    def load_dataset(ds):
        raw = load(ds)
        calls.append(1)
        if len(calls) == 2:  # the test split's read sees other features
            raw.features[0, 0] += 1.0
        return raw

    monkeypatch.setattr(pipeline, "load_dataset", load_dataset)
    out = zsl_train(tmp_path, *TINY)
    assert out.returncode != 0
    assert "changed during the run" in out.stderr and "arrays_sha256" in out.stderr
    assert "simulating it again" in out.stderr and "files" not in out.stderr  # a simulated dataset has none
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "results.json").exists()


def test_a_data_file_rewritten_between_splits_is_one_clear_error_naming_the_files(tmp_path, monkeypatch):
    from zsl_gen import pipeline
    from zsl_gen.data import make_synthetic, save_xlsa17

    data_dir = save_xlsa17(make_synthetic(name="MINE"), tmp_path / "MINE")
    load, calls = pipeline.load_dataset, []

    def load_dataset(ds):
        calls.append(1)
        if len(calls) == 2:  # between the val split's training and the test split's read
            changed = make_synthetic(name="MINE")
            changed.features[0, 0] += 1.0
            save_xlsa17(changed, data_dir)
        return load(ds)

    monkeypatch.setattr(pipeline, "load_dataset", load_dataset)
    out = zsl_train(tmp_path, *TINY, "dataset=cub", "dataset.name=MINE", f"data_dir={data_dir}")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "changed during the run" in out.stderr and "'files'" in out.stderr
    assert "res101.mat" in out.stderr and "Leave the files unchanged" in out.stderr
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize("generator, trainer", [("fclswgan", "trainer=ddp_cpu"), ("fvaegan", "trainer=ddp_cpu"),
                                                ("tfvaegan", "trainer=ddp_cpu"), ("fvaegan", "trainer.devices=2")])
def test_ddp_is_refused_in_one_line_for_closed_form_critics(tmp_path, generator, trainer):
    """Their critics' gradients are set in closed form, outside autograd: DDP would never average them and
    the ranks' critics would drift apart (before, the run died in Lightning's unused-parameter check)."""
    out = zsl_train(tmp_path, trainer, f"generator={generator}")
    assert out.returncode != 0
    assert f"with generator={generator}: its WGAN critic" in out.stderr
    assert "one GPU per job" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize("shape, dtype, order", [((5, 3), "float32", "C"), ((5, 3), "float64", "F"),
                                                  ((0, 3), "float32", "C")])
def test_synthetic_dataset_checksum_is_the_sha256_of_the_arrays_bytes(shape, dtype, order):
    import hashlib
    from types import SimpleNamespace

    import numpy as np
    from omegaconf import OmegaConf

    from zsl_gen.pipeline import dataset_record

    rng = np.random.default_rng(0)
    features = np.asarray(rng.random(shape), dtype=dtype, order=order)
    semantics = np.asarray(rng.random((2, 4)), dtype=dtype, order=order)
    raw = SimpleNamespace(name="s", semantic_space="att", files={}, n_classes=2, seen_classes=[0],
                          unseen_classes=[1], features=features, semantics=semantics, locs={}, features_note=None)
    ds = OmegaConf.create({"kind": "synthetic", "synthetic": {}, "feature_scaling": "minmax",
                           "l2_semantics": False})
    expected = hashlib.sha256(features.tobytes() + semantics.tobytes()).hexdigest()
    assert dataset_record(raw, ds)["arrays_sha256"] == expected


def test_lightning_lines_about_absent_accelerators_and_tips_are_dropped_the_rest_kept(caplog):
    import logging

    from zsl_gen.pipeline import quiet_lightning

    quiet_lightning()
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    messages = ["GPU available: False, used: False", "TPU available: False, using: 0 TPU cores",
                "HPU available: False, using: 0 HPUs", "💡 Tip: For seamless cloud uploads, try litmodels",
                "GPU available: True (cuda), used: False", "GPU available: True (cuda), used: True",
                "`Trainer.fit` stopped: `max_epochs=3` reached."]
    with caplog.at_level(logging.INFO, logger=logger.name):
        for message in messages:
            logger.info(message)
    assert [r.getMessage() for r in caplog.records if r.name == logger.name] == messages[4:]


@pytest.mark.parametrize("overrides, epochs", [
    ((), 30),  # the method's default schedule, cut to the simulated set's default cap
    (("generator.epochs=35",), 35),  # given explicitly: trained as given, the cap lifted
    (("++generator.epochs=35",), 35),
    (("generator.epochs=35", "dataset.max_generator_epochs=10"), 10),  # a cap given too: it still caps
    (("generator.epochs=5",), 5),
])
def test_an_explicit_generator_epochs_lifts_the_default_datasets_epoch_cap(overrides, epochs):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from zsl_gen.cli.train import lift_default_epoch_cap
    from zsl_gen.config import CONF_DIR
    from zsl_gen.pipeline import describe_epochs, generator_epochs

    GlobalHydra.instance().clear()  # an in-process zsl-train run may have left it initialised
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=lift_default_epoch_cap(list(overrides)))
    assert generator_epochs(cfg) == epochs
    assert ("capped by dataset.max_generator_epochs" in describe_epochs(cfg)) == (epochs in (10, 30))


def test_the_added_epoch_cap_override_stays_among_the_overrides_before_hydras_flags(tmp_path):
    from zsl_gen.cli.train import lift_default_epoch_cap

    assert lift_default_epoch_cap(["generator.epochs=4", "seed=1", "--cfg", "job", "-p", "generator.epochs"]) == [
        "generator.epochs=4", "++dataset.max_generator_epochs=null", "seed=1", "--cfg", "job", "-p", "generator.epochs"]
    assert lift_default_epoch_cap(["--cfg", "job", "-p", "generator.epochs"]) == ["--cfg", "job", "-p", "generator.epochs"]
    # the command as a user types it: a Hydra flag after the overrides
    proc = zsl_train(tmp_path, "generator.epochs=4", "--cfg", "job", "-p", "generator.epochs")
    assert proc.returncode == 0 and proc.stdout.strip() == "4", proc.stderr[-2000:]
    proc = zsl_train(tmp_path, "trainer.max_epochs=3")  # without `+`: the same one line as with it
    assert proc.returncode == 2 and proc.stderr.strip() == ("error: trainer.max_epochs=3: `trainer.max_epochs` is set "
                                                            "by zsl-train itself and would be ignored; use "
                                                            "generator.epochs=<n>"), proc.stderr


def test_the_epochs_trained_are_logged_and_an_explicit_count_is_recorded_uncapped(tmp_path):
    proc = zsl_train(tmp_path, *TINY, "selections=[paper]")
    assert proc.returncode == 0, proc.stderr
    assert "training on split=test (1440 training samples), 2 epochs" in proc.stdout + proc.stderr
    config = read_results(tmp_path)["config"]
    assert config["generator"]["epochs"] == 2 and config["dataset"]["max_generator_epochs"] is None
    log = (tmp_path / "run" / "train.log").read_text()  # the log file holds what the console showed
    assert "2 epochs" in log and "paper*" in log and f"results: {tmp_path / 'run' / 'results.json'}" in log


def test_a_later_splits_bad_feature_range_fails_before_any_split_trains(tmp_path):
    """feature_scaling=none with a BCE generator: split=val's training rows are in [0, 1] but one trainval row of
    a validation class (trained on by split=test only) is not; the run fails before split=val trains."""
    import numpy as np

    from zsl_gen.data import make_synthetic, save_byo

    raw = make_synthetic(n_classes=12, n_unseen=3, n_val_classes=2, semantic_dim=8, feature_dim=16,
                         samples_per_class=20, seed=0)
    raw.features = raw.features / raw.features.max()
    row = int(np.intersect1d(raw.locs["val"], raw.locs["trainval"])[0])
    raw.features[row, 3] = 1.5
    save_byo(raw, tmp_path / "data")
    proc = zsl_train(tmp_path, *TINY, "logger=none", "dataset=byo", f"data_dir={tmp_path / 'data'}",
                     "dataset.feature_scaling=none")
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "[INFO]" not in line]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "the training features lie in [0, 1.5] (split=test)" in lines[0], lines[0]
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "splits").exists()


def test_own_data_in_the_byo_format_trains_and_records_its_files_and_semantic_space(tmp_path):
    """The README's "Your own data" command: `zsl-train dataset=byo data_dir=<dir> dataset.name=<name>`."""
    from zsl_gen.data import make_synthetic, save_byo

    raw = make_synthetic(n_classes=12, n_unseen=3, n_val_classes=2, semantic_dim=8, feature_dim=16,
                         samples_per_class=20, seed=0)
    raw.semantic_space = "w2v"
    save_byo(raw, tmp_path / "my_dataset")
    proc = zsl_train(tmp_path, "generator=eszsl", "dataset=byo", f"data_dir={tmp_path / 'my_dataset'}",
                     "dataset.name=MINE")
    assert proc.returncode == 0, proc.stderr
    record = read_results(tmp_path)["dataset"]
    assert record["name"] == "MINE" and record["semantic_space"] == "w2v" and record["format"] == "byo"
    assert record["semantics_file"] == "semantics.npy" and record["semantic_key"] is None
    assert sorted(Path(f).name for f in record["files"]) == sorted(
        ["features.npy", "labels.npy", "semantics.npy", "classes.txt", "splits.json"])
    assert all(len(digest) == 64 for digest in record["files"].values())


def test_own_data_without_a_name_given_takes_the_name_it_records(tmp_path):
    """`dataset=byo` without `dataset.name`: splits.json's "name" (as `zsl-data info` shows it), else the
    directory's, never a placeholder."""
    from zsl_gen.data import make_synthetic, save_byo

    raw = make_synthetic(n_classes=12, n_unseen=3, n_val_classes=2, semantic_dim=8, feature_dim=16,
                         samples_per_class=20, seed=0, name="MyBirds")
    save_byo(raw, tmp_path / "birds")
    proc = zsl_train(tmp_path, "generator=eszsl", "dataset=byo", f"data_dir={tmp_path / 'birds'}", "logger=none",
                     "selections=[paper]")
    assert proc.returncode == 0, proc.stderr
    assert read_results(tmp_path)["dataset"]["name"] == "MyBirds" and "eszsl on MyBirds" in proc.stdout
    splits = tmp_path / "birds" / "splits.json"
    splits.write_text(json.dumps({k: v for k, v in json.loads(splits.read_text()).items() if k != "name"}))
    proc = zsl_train(tmp_path / "unnamed", "generator=eszsl", "dataset=byo", f"data_dir={tmp_path / 'birds'}",
                     "logger=none", "selections=[paper]")
    assert proc.returncode == 0, proc.stderr
    assert read_results(tmp_path / "unnamed")["dataset"]["name"] == "birds"


def test_data_under_a_benchmark_name_without_its_classes_is_warned_about(tmp_path, monkeypatch):
    from zsl_gen.data import make_synthetic
    from zsl_gen.data.byo import save_byo
    from zsl_gen.pipeline import benchmark_shape_warning

    assert benchmark_shape_warning(make_synthetic(n_classes=12, n_unseen=3, samples_per_class=3, name="MINE")) is None
    subset = benchmark_shape_warning(make_synthetic(n_classes=200, n_unseen=50, samples_per_class=3, semantic_dim=312,
                                                    name="CUB"))
    assert subset.startswith("dataset CUB: trainval / test_seen / test_unseen hold ") and "but CUB has 7057 / 1764 / " \
        "2967: the results are labelled CUB" in subset  # CUB's classes, a fraction of its samples
    # e.g. `-m experiment=fclswgan_cub,fclswgan_sun data_dir=/data/CUB`: CUB's data labelled SUN
    monkeypatch.setenv("WANDB_MODE", "disabled")
    save_byo(make_synthetic(n_classes=12, n_unseen=3, n_val_classes=3, feature_dim=32, semantic_dim=8), tmp_path / "d")
    proc = zsl_train(tmp_path, *TINY, "logger=none", "selections=[paper]", "dataset=byo", "dataset.name=SUN",
                     f"data_dir={tmp_path / 'd'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    warning = "dataset SUN: 9 seen / 3 unseen classes, but SUN has 645 / 72; trainval / test_seen / test_unseen hold"
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert any(w.startswith(warning) and "the results are labelled SUN" in w and "dataset=byo" in w
               for w in results["warnings"])
    assert results["dataset"]["warning"].startswith(warning) and warning in (tmp_path / "run" / "train.log").read_text()


def benchmark_like(name: str, sizes: tuple[int, int, int], classes: tuple[int, int], semantic_dim: int,
                   semantic_space: str = "att"):
    """A RawDataset with a benchmark's split sizes and class counts (2-d features: only the shapes matter)."""
    import numpy as np

    from zsl_gen.data import RawDataset

    n_seen, n_unseen = classes
    labels = np.concatenate([np.arange(sizes[0]) % n_seen, np.arange(sizes[1]) % n_seen,
                             n_seen + np.arange(sizes[2]) % n_unseen])
    starts = np.cumsum([0, *sizes])
    return RawDataset(name=name, features=np.ones((labels.size, 2), np.float32), labels=labels,
                      semantics=np.ones((n_seen + n_unseen, semantic_dim), np.float32),
                      class_names=[f"c{i}" for i in range(n_seen + n_unseen)],
                      locs={k: np.arange(starts[i], starts[i + 1]) for i, k in
                            enumerate(("trainval", "test_seen", "test_unseen"))}, semantic_space=semantic_space)


def test_another_benchmarks_data_or_semantics_under_a_benchmark_name_is_warned_about():
    from zsl_gen.pipeline import benchmark_shape_warning

    awa2 = (23527, 5882, 7913)
    assert benchmark_shape_warning(benchmark_like("AWA2", awa2, (40, 10), 85)) is None
    assert benchmark_shape_warning(benchmark_like("CUB", (7057, 1764, 2967), (150, 50), 1024, "sent")) is None
    # AWA2's files run as dataset=awa1: the same 40 / 10 classes, other samples
    assert benchmark_shape_warning(benchmark_like("AWA1", awa2, (40, 10), 85)) == (
        "dataset AWA1: trainval / test_seen / test_unseen hold 23527 / 5882 / 7913 samples, but AWA1 has 19832 / "
        "4958 / 5685: the results are labelled AWA1. If this is other data, give it its own name (dataset=byo "
        "data_dir=<dir> dataset.name=<its name>), or use the dataset config of what it is")
    # CUB's 1024-d sentence embeddings labelled as its 312-d attributes
    assert "the semantics are 1024-d, but CUB's 'att' vectors are 312-d" in benchmark_shape_warning(
        benchmark_like("CUB", (7057, 1764, 2967), (150, 50), 1024, "att"))
    # another space on a benchmark (word vectors): no expectation to check
    assert benchmark_shape_warning(benchmark_like("AWA2", awa2, (40, 10), 300, "w2v")) is None


def test_a_single_unseen_class_is_flagged_as_making_t1_meaningless(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    proc = zsl_train(tmp_path, "generator=eszsl", "logger=none", "dataset.synthetic.n_unseen=1",
                     "dataset.synthetic.n_val_classes=1", "dataset.synthetic.feature_dim=32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["results"]["paper"]["zsl"]["T1"] == 100.0  # one class to choose from
    flagged = [w for w in results["warnings"] if "a single unseen class" in w]
    assert [w.split(" ", 1)[0] for w in flagged] == ["split=val", "split=test"]
    assert all("T1 is 100% by construction" in w for w in flagged) and "choice is arbitrary" in flagged[0]


def test_a_val_selection_among_all_zero_h_is_flagged_as_arbitrary(tmp_path, monkeypatch):
    import dataclasses

    import numpy as np

    import zsl_gen.callbacks

    real = zsl_gen.callbacks.train_and_evaluate

    def never_right_on_unseen(*args, **kwargs):  # U = 0 everywhere, so H = 0
        curves = real(*args, **kwargs)
        return dataclasses.replace(curves, U=np.zeros_like(curves.U), H=np.zeros_like(curves.H))

    monkeypatch.setattr(zsl_gen.callbacks, "train_and_evaluate", never_right_on_unseen)
    proc = zsl_train(tmp_path, *TINY, "logger=none")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert any("split=val's H is 0 at every evaluated epoch" in w and "arbitrary" in w for w in results["warnings"])
    assert "split=val's H is 0" in (tmp_path / "run" / "train.log").read_text()


def test_a_single_run_into_a_directory_holding_a_run_is_refused_before_hydra_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    first = zsl_train(tmp_path, *TINY, "logger=none", "selections=[paper]")
    assert first.returncode == 0, first.stderr[-2000:]
    config = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    again = zsl_train(tmp_path, *TINY, "logger=none", "selections=[paper]", "seed=5")
    lines = [line for line in again.stderr.splitlines() if line.strip()]
    assert again.returncode == 2 and len(lines) == 1, again.stderr
    assert lines[0].startswith(f"error: hydra.run.dir={tmp_path / 'run'}: already holds a run (results.json, "
                               "checkpoints, splits, curves.json, generator); give a new directory")
    assert (tmp_path / "run" / ".hydra" / "config.yaml").read_text() == config  # the old run's config kept
    # a directory with a `generator/` of its own: the export would replace it
    (tmp_path / "mine" / "generator").mkdir(parents=True)
    mine = zsl_train(tmp_path, *TINY, "logger=none", f"hydra.run.dir={tmp_path / 'mine'}")
    assert mine.returncode == 2 and "already holds a run (generator)" in mine.stderr, mine.stderr
    from zsl_gen.cli.common import check_fresh_run_dir

    with pytest.raises(SystemExit):
        check_fresh_run_dir([f'hydra.run.dir="{tmp_path / "run"}"'])  # quoted, as a shell passes '"<dir>"'
    # Lightning's DDP ranks > 0 start into rank 0's run directory, and sweeps rerun into their job directories
    check_fresh_run_dir([f'hydra.run.dir="{tmp_path / "run"}"', "hydra.job.name=train_ddp_process_1"])
    check_fresh_run_dir(["-m", f"hydra.run.dir={tmp_path / 'run'}"])


def test_the_seed_sets_the_generators_initial_weights(tmp_path, monkeypatch):
    # seeds must vary the generator's initialisation too (not only the hold-out, batches and evaluations), or the
    # ± std over seeds would understate the method's spread
    from zsl_gen.systems.cvae import ConditionalVAE

    initial = []
    set_data = ConditionalVAE.set_data

    def record(self, *args, **kwargs):  # called on the freshly built system, before training
        initial.append(torch.cat([p.detach().flatten() for p in self.parameters()]).clone())
        return set_data(self, *args, **kwargs)

    monkeypatch.setattr(ConditionalVAE, "set_data", record)
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        proc = zsl_train(tmp_path / run, *TINY, "generator.epochs=1", "classifier.epochs=1", "selections=[paper]",
                         "logger=none", f"seed={seed}")
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(initial) == 3
    assert torch.equal(initial[0], initial[1]) and not torch.equal(initial[0], initial[2])


def test_val_excludes_test_reaches_the_protocol_and_the_record(tmp_path):
    n_fit = {}
    for excludes in (True, False):
        run = tmp_path / str(excludes)
        proc = zsl_train(run, "generator=eszsl", "selections=[val_split]", f"dataset.val_excludes_test={excludes}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads((run / "run" / "results.json").read_text())["protocol"]["val_excludes_test"] is excludes
        n_fit[excludes] = json.loads((run / "run" / "preprocessing.json").read_text())["features"]["n_fit"]
    assert n_fit[False] > n_fit[True]  # the test_seen images join split=val's training rows


def test_l2_semantics_reaches_training_and_the_export(tmp_path):
    import zsl_gen

    proc = zsl_train(tmp_path, *TINY, "generator.epochs=1", "classifier.epochs=1", "selections=[paper]",
                     "logger=none", "dataset.l2_semantics=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "preprocessing.json").read_text())["semantics"]["l2"] is True
    vectors = zsl_gen.load_generator(tmp_path / "run" / "generator").class_semantics
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(len(vectors)))


def test_sigterm_during_training_is_a_failure_exit_naming_the_resume(tmp_path, monkeypatch):
    # Lightning turns SIGTERM into a SystemExit without a code, which would exit 0
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from zsl_gen.systems.cvae import ConditionalVAE

    def terminated(*args, **kwargs):
        raise SIGTERMException

    monkeypatch.setattr(ConditionalVAE, "training_step", terminated)
    proc = zsl_train(tmp_path, *TINY, "logger=none")
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "error: stopped by SIGTERM" in proc.stderr and "ckpt_path=" in proc.stderr
    assert not (tmp_path / "run" / "results.json").exists()
