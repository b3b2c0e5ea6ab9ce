"""``zsl-eval``: evaluate an exported generator on a dataset, without training it.

    zsl-eval generator=outputs/train/runs/<run>/generator dataset=cub data_dir=/data/CUB [syn_num=300]

Features are scaled with the statistics stored in the export (not refitted). Reported: ``paper``
(as the method's paper reports: the best classifier epoch on test, optimistic, or for CADA-VAE, whose
export records ``paper_selection: last``, the final epoch) and ``last`` (the classifier's final epoch:
nothing chosen on test). A `val` selection is not offered here: the exported generator was trained on trainval,
which contains the validation classes.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from zsl_gen.cli.common import (check_fresh_run_dir, check_overrides, check_run_dir_disk, exit_on_sigterm, override_key,
                                report_user_errors)
from zsl_gen.config import CONF_DIR
from zsl_gen.errors import ZSLGenError, write_failure

log = logging.getLogger("zsl_gen")


def check_eval_config(cfg: DictConfig) -> None:
    """zsl-eval's own settings, each named with what it must be (before anything is loaded)."""
    from zsl_gen.errors import ConfigError

    if not OmegaConf.is_missing(cfg, "export") and isinstance(cfg.get("export"), int) \
            and not isinstance(cfg.get("export"), bool):  # generator=2024: a directory, read as a number
        OmegaConf.update(cfg, "export", str(cfg.export))
    if OmegaConf.is_missing(cfg, "export") or not isinstance(cfg.get("export"), str) or not cfg.export.strip():
        raise ConfigError("no generator given: zsl-eval generator=<run dir>/generator (the directory zsl-train "
                          f"exported){'' if OmegaConf.is_missing(cfg, 'export') else f', got export={cfg.export!r}'}")
    from zsl_gen.config import MAX_SEED

    for key, minimum, maximum in (("seed", 0, MAX_SEED), ("syn_num", 1, None)):
        value = cfg.get(key)
        if value is None:
            continue
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
            raise ConfigError(f"config field `{key}` must be an integer >= {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"config field `{key}` must be an integer in [{minimum}, {maximum}], got {value!r}")
    for key in ("classifier_from_export", "allow_slow_bf16"):
        if not isinstance(cfg.get(key), bool):
            raise ConfigError(f"config field `{key}` must be true or false, got {cfg.get(key)!r}")


def command_line_keys(group: str, overrides) -> set[str]:
    """The fields of config group ``group`` that command-line overrides set (``classifier.epochs=3`` → ``epochs``)."""
    return {override_key(o).split(".")[1] for o in overrides if override_key(o).startswith(group + ".")}


def batch_size_follows_syn_num(meta: dict) -> bool:
    """Whether the export's run set the final classifier's batch size by ``generator.syn_num`` (the
    ``classifier/softmax.yaml`` default): then a ``syn_num`` given to zsl-eval sets it too, as it would have in
    training. Exports older than the recorded flag: when the two were equal."""
    follows = meta.get("classifier_batch_size_follows_syn_num")
    if follows is None:
        return (meta.get("classifier") or {}).get("batch_size") == meta.get("syn_num")
    return bool(follows)


def unseen_classes_it_trained_on(generator, class_names: list[str], data) -> list[str]:
    """The names of ``data``'s unseen classes that the exported ``generator`` (``export.Generator``) trained on
    as seen classes: the same name and the same (preprocessed) class vector, so that placeholder names
    (``class_000``, ... of files without names) of unrelated datasets do not count."""
    trained = {c["name"]: i for i, c in enumerate(generator.meta.get("classes", [])) if c.get("role") == "seen"}
    vectors = generator.class_semantics

    def trained_on(c: int) -> bool:
        row = trained.get(class_names[c])
        return row is not None and vectors is not None and row < len(vectors) and \
            torch.allclose(data.semantics[c].float(), vectors[row].float())

    return [class_names[c] for c in data.unseen_classes.tolist() if trained_on(c)]


def evaluate_export(cfg: DictConfig, output_dir: Path, explicit_classifier: set[str] | frozenset = frozenset(),
                    explicit_dataset: set[str] | frozenset = frozenset()) -> dict:
    """Evaluate ``cfg.export`` on ``cfg.dataset``; write and return its results.

    ``explicit_dataset``: the ``dataset`` fields given on the command line (preprocessing ones are refused).
    ``explicit_classifier``: the ``classifier`` fields given on the command line; with
    ``classifier_from_export`` they keep their given values, every other field takes the export's.
    """
    from zsl_gen.callbacks import evaluation_seed
    from zsl_gen.config import check_bf16_hardware, check_known_fields, check_torch_device
    from zsl_gen.data import apply_feature_scaling, build_protocol
    from zsl_gen.data.validate import origin_of
    from zsl_gen.errors import CheckpointError, ConfigError
    from zsl_gen.eval import train_and_evaluate
    from zsl_gen.export import load_generator, semantics_checksum
    from zsl_gen.pipeline import (classifier_config, dataset_record, load_dataset, print_and_log,
                                  single_unseen_class_warning)
    from zsl_gen.eval.selection import CurveStack, select
    from zsl_gen.results import summary_table, utc_now, versions, write_json_atomic

    check_eval_config(cfg)
    check_known_fields(cfg, "eval")
    given = sorted(k for k in explicit_dataset if k in ("feature_scaling", "l2_semantics"))
    if given:
        raise ConfigError(f"{', '.join(f'dataset.{k}' for k in given)}: zsl-eval preprocesses the data as the generator "
                          "was trained (the export's MinMax statistics and L2 setting), so this would be ignored; "
                          "remove it")
    check_torch_device(str(cfg.device))
    generator = load_generator(cfg.export, device=cfg.device)
    meta = generator.meta
    seed = int(cfg.seed if cfg.seed is not None else meta.get("seed", 0))
    OmegaConf.update(cfg, "seed", seed)
    eval_seed = evaluation_seed(seed, int(meta.get("epochs", 0)))  # the run's own evaluation of its last epoch
    syn_num = int(cfg.syn_num if cfg.syn_num is not None else meta.get("syn_num", 300))
    hparams = generator.system.hparams
    if "n_latent_unseen" in hparams:  # CADA-VAE's classifier takes n_latent_unseen latents per unseen class: that
        if cfg.syn_num is not None:  # count is what syn_num sets (zsl-train ties the two by interpolation)
            hparams.n_latent_unseen = syn_num
        syn_num = int(hparams.n_latent_unseen)
    OmegaConf.update(cfg, "syn_num", syn_num)
    if cfg.classifier_from_export and meta.get("classifier"):
        exported = {k: v for k, v in meta["classifier"].items() if k in cfg.classifier and k not in explicit_classifier}
        if "batch_size" in exported and batch_size_follows_syn_num(meta):
            exported["batch_size"] = syn_num  # as zsl-train generator.syn_num=N sets it (a syn_num given here)
        cfg.classifier = OmegaConf.merge(cfg.classifier, exported)
    check_bf16_hardware(cfg, device=str(cfg.device), fix=(
        "add classifier.precision=fp32" if cfg.classifier_from_export and "precision" not in explicit_classifier
        else "use classifier.precision=fp32"))
    raw = load_dataset(cfg.dataset)
    l2 = bool(meta["preprocessing"].get("semantics", {}).get("l2"))
    # scaled below with the export's statistics, not refitted
    data = build_protocol(raw, "test", feature_scaling="none", l2_semantics=l2, seed=seed, check_nonnegative=False)
    if meta["preprocessing"]["features"].get("kind") != "minmax" and float(raw.features.min()) < 0:
        raise CheckpointError(
            f"{origin_of(raw).features} has negative values (min {float(raw.features.min()):.4g}), but the generator "
            f"{cfg.export} was trained without feature scaling (dataset.feature_scaling=none) and outputs "
            "non-negative features: evaluate it on non-negative features, or train one with "
            "dataset.feature_scaling=minmax")
    if data.feature_dim != meta["feature_dim"] or data.semantic_dim != meta["semantic_dim"]:
        raise CheckpointError(
            f"{cfg.export}: generator expects {meta['feature_dim']}-d features and {meta['semantic_dim']}-d "
            f"semantics, dataset {raw.name} has {data.feature_dim} and {data.semantic_dim}")
    leaked = unseen_classes_it_trained_on(generator, raw.class_names, data)
    if leaked:
        raise CheckpointError(
            f"{len(leaked)} of dataset {raw.name}'s unseen classes ({', '.join(map(repr, leaked[:5]))}"
            f"{', ...' if len(leaked) > 5 else ''}) are classes the generator {cfg.export} was trained on (seen "
            "classes in its generator.yaml): scoring them as unseen would be optimistic; evaluate it on a split "
            "whose unseen classes it never saw")
    scale = lambda x: apply_feature_scaling(x, meta["preprocessing"])  # noqa: E731
    data = replace(data, train_x=scale(data.train_x), seen_x=scale(data.seen_x), unseen_x=scale(data.unseen_x),
                   preprocessing=meta["preprocessing"])
    same_semantics = semantics_checksum(data.semantics) == meta["semantics_sha256"]
    record = dataset_record(raw, cfg.dataset)
    warnings = [record["warning"]] if record.get("warning") else []  # as zsl-train's results.json keeps them
    if not same_semantics:
        warnings.append("the dataset's class semantics differ from those the generator was trained with "
                        "(sha256 mismatch): classes are synthesized from the dataset's vectors")
    single = single_unseen_class_warning(data)
    if single:
        warnings.append(single)
    for warning in warnings:
        log.warning(warning)
    device = generator.system.device
    noise = torch.Generator(device=device).manual_seed(eval_seed)
    ccfg = classifier_config(cfg)
    inputs = generator.system.classifier_inputs(data.to(device), syn_num, noise, ccfg.feature_dtype)
    with torch.enable_grad():
        curves = train_and_evaluate(inputs, ccfg, seed=eval_seed)
    stack = CurveStack.from_records([(int(meta.get("epochs", 0)), curves)])
    rule = meta.get("paper_selection", "best")  # as the run's own `paper` reads (CADA-VAE: its last epoch)
    last = select({"test": stack}, ["paper"], paper="last")["paper"]
    last.pop("rule")  # `last` is a selection of its own here, not a paper rule
    results = {
        "created": utc_now(), "method": meta.get("method", meta["_target_"]), "seed": seed,
        "dataset": {**record, "preprocessing": {  # what was applied: the export's
            "feature_scaling": meta["preprocessing"]["features"].get("kind", "none"), "l2_semantics": l2,
            "from": "the export"}},
        "generator": {"path": str(Path(cfg.export).resolve()), "trained_on": meta["dataset"],
                      "weights_sha256": meta["weights_sha256"], "same_semantics": same_semantics},
        "protocol": {"selections": ["paper", "last"], "splits_run": ["test"], "syn_num": syn_num},
        "results": {"paper": select({"test": stack}, ["paper"], paper=rule)["paper"], "last": last},
        "device": str(cfg.device), "warnings": warnings,
        "config": OmegaConf.to_container(cfg, resolve=True), "versions": versions(),
    }
    results["protocol"]["paper_selection"] = rule
    write_json_atomic(output_dir / "curves.json", {"test": stack.as_dict()})
    write_json_atomic(output_dir / "results.json", results)
    print_and_log(f"{summary_table(results)}\nresults: {output_dir / 'results.json'}")  # evaluate.log too
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def eval_app(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        evaluate_export(cfg, output_dir, command_line_keys("classifier", hydra_cfg.overrides.task),
                        command_line_keys("dataset", hydra_cfg.overrides.task))
    except Exception as err:
        err = write_failure(output_dir, err, only_disk=True) or err  # a full or read-only disk
        if not isinstance(err, ZSLGenError):
            raise
        from zsl_gen.pipeline import print_and_log

        print_and_log(f"error: {err}", error=True)
        sys.exit(2)


@report_user_errors
@exit_on_sigterm
def main() -> None:
    # `generator` is also a config group of zsl-train (conf/generator/), so Hydra would read
    # `generator=<dir>` as a group choice; it is the export directory here, stored as `export`.
    sys.argv = [("export=" + a[len("generator="):]) if a.startswith("generator=") else a for a in sys.argv]
    check_overrides(sys.argv[1:], "eval")
    check_fresh_run_dir(sys.argv[1:])
    check_run_dir_disk(sys.argv[1:])
    eval_app()


if __name__ == "__main__":
    main()
