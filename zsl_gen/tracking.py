"""Loggers for one training run: CSV (default), TensorBoard, W&B (offline automatically without a key)."""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from zsl_gen.config import instantiate
from zsl_gen.errors import ConfigError

log = logging.getLogger(__name__)


def wandb_has_credentials() -> bool:
    """True when W&B can log online: an API key in the environment or a `wandb login` netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _importable(*modules: str) -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in modules)


def build_loggers(cfg: DictConfig, split: str, run_name: str) -> list[Any]:
    """Instantiate every configured logger for the run on ``split``.

    CSV/TensorBoard write one version per split; W&B gets one run per split, grouped by job.
    """
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if not node:
            continue
        if str(node.get("_target_", "")).endswith("WandbLogger"):
            mode = os.environ.get("WANDB_MODE")
            # "dryrun" is what WandbLogger itself sets for an offline run (it persists in the process)
            offline = bool(node.get("offline")) or mode in ("offline", "dryrun")
            if not offline and mode != "disabled" and not wandb_has_credentials():
                offline = True
                log.warning("W&B: no API key found (WANDB_API_KEY or `wandb login`): logging offline under "
                            "%s/wandb. Upload later with `wandb sync %s/wandb/offline-run-*`.",
                            node.save_dir, node.save_dir)
            elif offline and mode != "disabled":
                log.info("W&B: logging offline under %s/wandb. Upload later with "
                         "`wandb sync %s/wandb/offline-run-*`.", node.save_dir, node.save_dir)
            Path(node.save_dir).mkdir(parents=True, exist_ok=True)
            # the mode passed explicitly: wandb keeps the WANDB_MODE it saw first in a process (a later
            # in-process run, e.g. a notebook or a test, would otherwise inherit it)
            wandb_mode = "disabled" if mode == "disabled" else "offline" if offline else "online"
            wandb_logger = instantiate(node, name=f"{run_name}-{split}", offline=offline, mode=wandb_mode)
            # Lightning hands wandb.init `anonymous=None`, which wandb (≥ 0.19) answers on every run with a
            # deprecation warning that says nothing about this run
            init_kwargs = getattr(wandb_logger, "_wandb_init", None)
            if isinstance(init_kwargs, dict) and init_kwargs.get("anonymous", False) is None:
                del init_kwargs["anonymous"]
            loggers.append(wandb_logger)
        else:
            if str(node.get("_target_", "")).endswith("TensorBoardLogger") and not _importable("tensorboard",
                                                                                                  "tensorboardX"):
                raise ConfigError("the TensorBoard logger needs the tensorboard package, which is not installed: "
                                  "pip install -e \".[tensorboard]\" (or use logger=csv, the default)")
            loggers.append(instantiate(node, version=split))
    return loggers


def finish_loggers(loggers: list[Any]) -> None:
    """Close W&B runs so multirun jobs never log into each other."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            if logger._experiment is not None:  # only a started run needs finishing
                logger.experiment.finish()
            wandb.finish()


def log_final_results(loggers: list[Any], results: dict[str, Any], export_dir: Path) -> None:
    """Into each W&B run: the final results table and the exported generator as a model artifact."""
    for logger in loggers:
        if type(logger).__name__ != "WandbLogger":
            continue
        import wandb

        rows = [[name, sel["gzsl"]["S"], sel["gzsl"]["U"], sel["gzsl"]["H"], sel["zsl"]["T1"], sel["chosen_on"]]
                for name, sel in results["results"].items()]
        logger.log_table("results", columns=["selection", "S", "U", "H", "T1", "chosen_on"], data=rows)
        for name, sel in results["results"].items():
            logger.experiment.summary.update({f"{name}/{k}": v for k, v in {**sel["gzsl"], **sel["zsl"]}.items()})
        # a disabled run keeps nothing: staging the export would only leave a copy under ~/.local/share/wandb
        if Path(export_dir).is_dir() and not getattr(logger.experiment, "disabled", False):
            artifact = wandb.Artifact(f"generator-{results['method']}-{results['dataset']['name']}", type="model",
                                      metadata={"seed": results["seed"], "dataset": results["dataset"]["name"]})
            # immutable: the export is never rewritten, so W&B reads it in place instead of copying it to its
            # staging directory (a copy per run: 20-300 MB each, never removed)
            artifact.add_dir(str(export_dir), policy="immutable")
            logger.experiment.log_artifact(artifact)
