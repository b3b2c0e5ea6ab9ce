"""Config checks and the one `instantiate` every Hydra target goes through."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from zsl_gen.errors import ConfigError, ZSLGenError

ALLOWED_TARGET_PREFIXES = ("zsl_gen.", "pytorch_lightning.")
SELECTIONS = ("paper", "val", "val_split")


def instantiate(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` restricted to zsl-gen and Lightning targets.

    A config is code: a ``_target_`` elsewhere (``os.system``, ...) is refused rather than run.
    """
    target = node.get("_target_") if isinstance(node, (dict, DictConfig)) else None
    if not isinstance(target, str) or not target.startswith(ALLOWED_TARGET_PREFIXES):
        raise ConfigError(f"refusing to instantiate _target_={target!r}: only targets under "
                          f"{', '.join(ALLOWED_TARGET_PREFIXES)} are allowed")
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as err:
        # Hydra wraps what the constructor raised; the user needs the cause and the config node it came from
        cause = err.__cause__
        full_key = next((line[len("full_key: "):] for line in str(err).splitlines()
                         if line.startswith("full_key: ")), None) or "the config"
        if isinstance(cause, ZSLGenError):
            raise type(cause)(f"{full_key}: {cause}") from None
        if cause is None:
            raise ConfigError(f"{full_key}: {str(err).splitlines()[0]}") from None
        raise ConfigError(f"{full_key}: {target} cannot be built from these settings "
                          f"({type(cause).__name__}: {cause}); check the {full_key}.* values") from None


# seeds go to numpy's and Lightning's seeding, which take 32-bit unsigned values
MAX_SEED = 2**32 - 1


def _number(cfg: DictConfig, key: str, *, minimum: float, integer: bool = False, maximum: float | None = None) -> None:
    value = OmegaConf.select(cfg, key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    ok = ok and value >= minimum and (not integer or isinstance(value, int))
    if not ok or (maximum is not None and value > maximum):
        kind = "an integer" if integer else "a number"
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        whole = integer and is_real(value) and float(value).is_integer() and value >= minimum  # 5.0: write 5
        example = int(value) if whole else (int(minimum) if integer else minimum)
        raise ConfigError(f"config field `{key}` must be {kind} {bound}, got {value!r} "
                          f"(set it on the command line, e.g. {key}={example})")


# generators whose critic updates set closed-form gradients (Critic.wgan_gp_backward), outside autograd
CLOSED_FORM_CRITICS = ("fclswgan", "fvaegan", "tfvaegan")


# generator.system fields (those a generator has) and what they must be; checked before any network is built
SYSTEM_POSITIVE_INTS = ("batch_size", "cls_batch_size", "hidden_dim", "latent_dim", "noise_dim", "critic_steps",
                        "cls_epochs", "n_latent_seen", "n_latent_unseen", "feedback_loop", "feature_enc_hidden",
                        "feature_dec_hidden", "semantic_enc_hidden", "semantic_dec_hidden")
SYSTEM_BETAS = ("beta1", "beta2", "cls_beta1")
SYSTEM_NONNEGATIVE = ("lambda_gp", "cls_weight", "recons_weight", "a1", "a2", "gamma_d", "gamma_g", "kl_max",
                      "cross_max", "align_max")
SYSTEM_FLAGS = ("adaptive_lambda", "amsgrad", "fused_adam", "encoded_noise", "encoder_bottleneck",
                "encoder_default_betas", "freeze_decoder", "prior_feedback_from_recon", "shared_eps")


# CADA-VAE's loss weights warmed up over epoch windows (<name>_start, <name>_end)
WARMUPS = ("kl", "cross", "align")

# generator.name selects code paths (ESZSL's closed form, the DDP guard of closed-form critics, the method label
# of every result): it must name the system the config builds
GENERATOR_SYSTEMS = {"cvae": "zsl_gen.systems.cvae.ConditionalVAE", "fclswgan": "zsl_gen.systems.fclswgan.FCLSWGAN",
                     "fvaegan": "zsl_gen.systems.fvaegan.FVAEGAN", "tfvaegan": "zsl_gen.systems.tfvaegan.TFVAEGAN",
                     "cadavae": "zsl_gen.systems.cadavae.CADAVAE", "eszsl": None}
# trainer.precision values the systems are built and measured for (BENCHMARKS.md)
TRAINER_PRECISIONS = ("32-true", "32", 32, "bf16-mixed", "bf16")  # bf16: Lightning's alias of bf16-mixed
# Trainer arguments that would end or shape training behind the schedule's back, or that configure a Lightning
# validation loop zsl-gen does not use (evaluation runs in a callback, every `eval_every` epochs)
TRAINER_NOT_USED = {
    "max_steps": "generator.epochs=<n> sets the schedule (a run cut short would be labelled with the whole one)",
    "max_time": "generator.epochs=<n> sets the schedule (a run cut short would be labelled with the whole one)",
    "check_val_every_n_epoch": "eval_every=<n> sets when the generator is evaluated (no Lightning validation loop)",
    "val_check_interval": "eval_every=<n> sets when the generator is evaluated (no Lightning validation loop)",
}


def is_real(value: Any) -> bool:
    """A finite int or float (not a bool, a string or NaN): what a numeric config field must hold."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_generator_system(cfg: DictConfig) -> None:
    """The generator's numeric and boolean settings, each named with its valid range (a bad one would
    otherwise fail deep inside torch, or train nothing: ``lr=0``)."""
    system = cfg.generator.get("system")
    if system is None:
        return
    for key in system:
        value, field = system.get(key), f"generator.system.{key}"
        if key == "lr" or key.endswith("_lr"):
            ok, want = is_real(value) and value > 0, "a number > 0, e.g. 1e-4"
        elif key in SYSTEM_POSITIVE_INTS:
            if key == "noise_dim" and value is None:
                continue
            ok, want = is_real(value) and isinstance(value, int) and value >= 1, "an integer >= 1"
        elif key in SYSTEM_BETAS:
            ok, want = is_real(value) and 0 <= value < 1, "a number in [0, 1), e.g. 0.5"
        elif key in SYSTEM_NONNEGATIVE:
            ok, want = is_real(value) and value >= 0, "a finite number >= 0"
        elif key in SYSTEM_FLAGS:
            ok, want = isinstance(value, bool), "true or false"
        elif key.endswith(("_start", "_end")) and key.split("_")[0] in WARMUPS:
            ok, want = is_real(value) and isinstance(value, int) and value >= 0, "an epoch, an integer >= 0"
        else:
            continue
        if not ok:
            raise ConfigError(f"config field `{field}` must be {want}, got {value!r} (generator="
                              f"{cfg.generator.get('name')})")
    for weight in WARMUPS:  # a window that ends before it starts would warm the weight down
        start, end = system.get(f"{weight}_start"), system.get(f"{weight}_end")
        if isinstance(start, int) and isinstance(end, int) and end < start:  # (end = start: full weight at once)
            raise ConfigError(f"config fields `generator.system.{weight}_start`={start} and `{weight}_end`={end}: "
                              f"the {weight} warm-up must not end before it starts (end >= start)")


# The groups whose every key zsl-gen's own code reads: a key none of their configs has (`+generator.epoch=3`,
# as Hydra suggests for a typo) would be ignored without a word. (`trainer` and `generator.system` keys go to
# Lightning's and the systems' constructors, which refuse unknown ones themselves.)
CHECKED_GROUPS = ("dataset", "generator", "classifier")
# Trainer arguments zsl-train passes itself (they would silently win over the config's)
TRAINER_SET_BY_ZSL_TRAIN = {"max_epochs": "generator.epochs=<n>", "callbacks": None, "logger": "logger=<choice>",
                            "enable_progress_bar": None, "default_root_dir": "hydra.run.dir=<dir>", "plugins": None}


# the Hydra configs: the repository's conf/ for an editable install, zsl_gen/conf inside an installed wheel
# (pyproject.toml maps one to the other)
CONF_DIR = next((d for d in (Path(__file__).resolve().parent / "conf", Path(__file__).resolve().parents[1] / "conf")
                 if (d / "train.yaml").is_file()), Path(__file__).resolve().parents[1] / "conf")


def config_groups(config_name: str = "train") -> tuple[str, ...]:
    """The config groups ``conf/<config_name>.yaml``'s defaults list composes (``dataset``, ``generator``, ...)."""
    defaults = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{config_name}.yaml")).get("defaults", [])
    return tuple(g for g in (next(iter(d)) if isinstance(d, dict) else d for d in defaults) if g != "_self_")


def known_fields(config_name: str = "train") -> dict[str, tuple[str, ...]]:
    """What a ``+key=`` on the command line may add without being ignored, from ``conf/``: ``""`` → the
    top-level keys ``<config_name>.yaml`` composes (its own and its groups'), and for each of ``CHECKED_GROUPS``
    every key one of its ``conf/<group>/*.yaml`` has."""
    own = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{config_name}.yaml"))
    own.pop("defaults", None)
    top = {*own, *config_groups(config_name), "dataset_name"}  # dataset_name: dataset=byo's name
    fields = {"": tuple(sorted(top))}
    for group in CHECKED_GROUPS:
        fields[group] = tuple(sorted({k for f in (CONF_DIR / group).glob("*.yaml") for k in OmegaConf.load(f)}))
    return fields


def did_you_mean(name: str, options, spell=lambda close: f"`{close}`") -> str:
    """``"did you mean <closest option>? "`` for a mistyped ``name`` (``spell`` writes the option), or ``""``."""
    import difflib

    close = difflib.get_close_matches(str(name), list(options), n=1)
    return f"did you mean {spell(close[0])}? " if close else ""


def check_known_fields(cfg: DictConfig, config_name: str = "train") -> None:
    """Refuse keys no code reads (``generator.epoch``, ``+eval_evry=2``) and trainer arguments zsl-train sets
    itself."""
    for group, fields in known_fields(config_name).items():
        where = f"{group}." if group else ""
        for key in (cfg.get(group) or {}) if group else cfg:
            if key not in fields:
                hint = did_you_mean(key, fields, lambda close: f"`{where}{close}`")
                what = f"a {group} setting" if group else f"a zsl-{config_name} setting"
                raise ConfigError(f"config field `{where}{key}` is not {what} and would be ignored; {hint}the "
                                  f"settings there are {', '.join(fields)}")
    for key in cfg.get("trainer") or {}:
        if key in TRAINER_SET_BY_ZSL_TRAIN:
            use = TRAINER_SET_BY_ZSL_TRAIN[key]
            raise ConfigError(f"config field `trainer.{key}` is set by zsl-train itself and would be ignored; "
                              + (f"use {use}" if use else "remove it"))
        if key in TRAINER_NOT_USED and cfg.trainer.get(key) is not None:
            raise ConfigError(f"config field `trainer.{key}` is not used by zsl-gen: {TRAINER_NOT_USED[key]}; "
                              "remove it")


def validate_train_config(cfg: DictConfig) -> None:
    """Fail early, naming the field, on values that would otherwise break deep inside training."""
    check_known_fields(cfg)
    _number(cfg, "seed", minimum=0, integer=True, maximum=MAX_SEED)
    _number(cfg, "eval_every", minimum=1, integer=True)
    if not isinstance(cfg.get("keep_freed_memory", True), bool):
        raise ConfigError(f"config field `keep_freed_memory` must be true or false, got "
                          f"{cfg.keep_freed_memory!r}")
    if cfg.get("offload_optimizer_state_mb") is not None:
        _number(cfg, "offload_optimizer_state_mb", minimum=0)
    if cfg.get("on_divergence", "stop") not in ("stop", "error"):
        raise ConfigError(f"config field `on_divergence` must be 'stop' or 'error', got {cfg.on_divergence!r}")
    factor = cfg.get("stop_on_explosion")
    if factor is not None and not (isinstance(factor, (int, float)) and not isinstance(factor, bool)
                                   and 1 < factor < math.inf):
        raise ConfigError("config field `stop_on_explosion` must be a factor > 1 (e.g. "
                          f"stop_on_explosion=1000) or null, got {factor!r}")
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu"))
    check_device_available(accelerator, f"trainer.accelerator={accelerator}",
                           "use trainer=cpu, or install torch's CUDA build on a machine with an NVIDIA GPU "
                           "(README, Install variants)")
    check_trainer_settings(cfg)
    check_bf16_hardware(cfg)
    if isinstance(cfg.selections, str):
        raise ConfigError(f"config field `selections` must be a list, got the string {cfg.selections!r}: write "
                          f"selections=[{cfg.selections}]")
    if not OmegaConf.is_list(cfg.selections):
        raise ConfigError(f"config field `selections` must be a list such as [paper,val], got {cfg.selections!r}")
    selections = list(cfg.selections)
    if not selections or any(s not in SELECTIONS for s in selections):
        raise ConfigError(f"config field `selections` must be a non-empty subset of {list(SELECTIONS)}, "
                          f"got {selections}")
    from zsl_gen.eval.selection import PAPER_SELECTIONS

    if cfg.get("paper_selection", "best") not in PAPER_SELECTIONS:
        raise ConfigError(f"config field `paper_selection` must be one of {list(PAPER_SELECTIONS)} (best: the "
                          "best epoch on test; best_at_last_epoch: the best classifier epoch of the last generator "
                          "epoch on test, f-CLSWGAN's; last: the last epoch, CADA-VAE's protocol), got "
                          f"{cfg.paper_selection!r}")
    check_generator_name(cfg)
    check_search_generator(cfg)
    strategy = str(OmegaConf.select(cfg, "trainer.strategy", default="auto"))
    if any(k in strategy for k in ("spawn", "fork", "notebook")):  # ddp_notebook is Lightning's ddp_fork
        raise ConfigError(f"trainer.strategy={strategy}: the evaluations (and their records) would stay in the "
                          "started processes; use trainer=ddp_cpu (strategy=ddp), or one process per job")
    devices, nodes = (OmegaConf.select(cfg, f"trainer.{k}", default=1) for k in ("devices", "num_nodes"))
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu"))
    if OmegaConf.select(cfg, "trainer.accumulate_grad_batches") is not None:  # 0 fails deep in Lightning
        _number(cfg, "trainer.accumulate_grad_batches", minimum=1, integer=True)
    if process_count(nodes, "cpu") > 1 and not multi_node_launch():
        raise ConfigError(f"trainer.num_nodes={nodes} but this process was not started by a multi-node launcher "
                          f"(none of {', '.join(MULTI_NODE_ENV)} is set), so it would wait forever for the other "
                          "nodes: start one process per node with a launcher (on SLURM: -m hydra/launcher=slurm_gpu "
                          f"hydra.launcher.nodes={nodes}; or torchrun --nnodes={nodes}), or remove trainer.num_nodes")
    several = process_count(devices, accelerator) > 1 or process_count(nodes, "cpu") > 1
    if (several or any(k in strategy for k in ("ddp", "fsdp", "deepspeed"))) and \
            cfg.generator.name in CLOSED_FORM_CRITICS:
        raise ConfigError(
            f"several processes (trainer.strategy={strategy}, trainer.devices={devices}, trainer.num_nodes={nodes}) "
            f"with generator={cfg.generator.name}: its WGAN critic is updated with "
            "closed-form gradients, which DDP does not average across processes (each rank's critic would "
            "drift apart). Train it on one device (trainer=cpu or trainer=gpu); to use several GPUs, run "
            "seeds or sweep points side by side, one GPU per job (e.g. -m hydra/launcher=slurm_gpu trainer=gpu).")
    if cfg.dataset.kind not in ("synthetic", "files"):
        raise ConfigError(f"config field `dataset.kind` must be 'synthetic' or 'files', got {cfg.dataset.kind!r}")
    check_dataset_settings(cfg)
    if cfg.generator.name != "eszsl":
        _number(cfg, "generator.epochs", minimum=1, integer=True)
        _number(cfg, "generator.syn_num", minimum=1, integer=True)
        if cfg.generator.get("system") is None:
            raise ConfigError("config field `generator.system` is empty: pick a generator, e.g. generator=cvae")
        check_generator_system(cfg)


# what the cluster environments Lightning detects (SLURM, torchelastic/torchrun and Kubeflow's WORLD_SIZE, LSF,
# MPI) or a manual multi-node start (NODE_RANK with MASTER_ADDR) set in each process
MULTI_NODE_ENV = ("SLURM_NTASKS", "WORLD_SIZE", "NODE_RANK", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def multi_node_launch() -> bool:
    """Whether this process was started by a launcher that runs it on several nodes."""
    return any(os.environ.get(name) for name in MULTI_NODE_ENV)


def process_count(value: Any, accelerator: str = "cpu") -> int:
    """How many processes a ``trainer.devices`` (or ``num_nodes``) value starts: ``2``, ``"2"``, ``[0, 1]``,
    ``"0,1"`` → 2; ``1``, ``[0]`` → 1; ``-1`` and ``"auto"`` → every GPU here with a GPU accelerator (one
    process on a CPU for ``"auto"``, one per core for ``-1``)."""
    if OmegaConf.is_list(value) or isinstance(value, (list, tuple)):
        return len(value)
    text = str(value).strip()
    if "," in text:
        return len([part for part in text.split(",") if part.strip()])
    gpu = accelerator in ("gpu", "cuda")
    if text == "auto" or text == "-1":
        import torch

        if gpu:
            return max(1, torch.cuda.device_count())
        return 1 if text == "auto" else (os.cpu_count() or 1)
    try:
        return int(text)
    except ValueError:
        return 1


def check_generator_name(cfg: DictConfig) -> None:
    """``generator.name`` must be a generator zsl-gen has and name the system the config builds: it selects
    code paths and labels every result (``generator.name=myrun`` would relabel the method and skip its checks)."""
    name = cfg.generator.get("name")
    target = OmegaConf.select(cfg, "generator.system._target_", default=None)
    if name not in GENERATOR_SYSTEMS:
        raise ConfigError(f"config field `generator.name`={name!r} is not a generator zsl-gen has "
                          f"({', '.join(GENERATOR_SYSTEMS)}); {did_you_mean(name, GENERATOR_SYSTEMS)}it selects the "
                          "method's code and labels its results: pick one with generator=<name> (to tell runs "
                          "apart, use the run directory: hydra.run.dir=...)")
    if GENERATOR_SYSTEMS[name] is not None and target is not None and target != GENERATOR_SYSTEMS[name]:
        owner = next((n for n, t in GENERATOR_SYSTEMS.items() if t == target), None)
        raise ConfigError(f"config field `generator.name`={name} but generator.system._target_={target}"
                          + (f" (generator={owner}'s)" if owner else "") + ": the name must be the system's; "
                          "pick the generator with generator=<name>")
    if GENERATOR_SYSTEMS[name] is None and target is not None:
        raise ConfigError(f"config field `generator.name`=eszsl but generator.system._target_={target}: ESZSL has no "
                          "generator network; use generator=eszsl")


def check_search_generator(cfg: DictConfig) -> None:
    """``hparams_search=<name>`` searches that generator's settings: with another generator (``hparams_search=cvae
    generator=fclswgan``, or an experiment of another method) the trials would sample a space that is not its."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    choices = HydraConfig.get().runtime.choices
    search = choices.get("hparams_search")
    if search in (None, "null"):
        return
    if search != cfg.generator.name:
        raise ConfigError(f"hparams_search={search} searches {search}'s settings, but the generator is "
                          f"{cfg.generator.name}: use hparams_search={cfg.generator.name}, or leave generator= out")
    # the search picks its generator itself (override /generator), over an experiment's: an experiment of
    # another method would lend it that method's recipe (seed, syn_num, lr, batch size) instead
    experiment = choices.get("experiment")
    method = str(experiment).split("_")[0] if experiment not in (None, "null") else None
    if method is not None and method in GENERATOR_SYSTEMS and method != search:
        raise ConfigError(f"hparams_search={search} with experiment={experiment}: the search trains {search} with "
                          f"{method}'s recipe; use experiment={search}_{str(experiment).split('_', 1)[1]} (or "
                          f"hparams_search={method})")


def check_trainer_settings(cfg: DictConfig) -> None:
    """``trainer.precision`` and ``trainer.deterministic``: values the systems run with, named otherwise."""
    precision = OmegaConf.select(cfg, "trainer.precision", default="32-true")
    if precision not in TRAINER_PRECISIONS:
        why = ("fp16 autocast is not supported: on a CPU Lightning silently runs bf16 instead, and the WGAN critics' "
               "closed-form gradients bypass fp16's loss scaling" if str(precision).startswith("16") else
               "the networks would be cast but not the data they read" if str(precision).endswith("-true") or
               str(precision) == "64" else "not a precision zsl-gen runs")
        raise ConfigError(f"config field `trainer.precision`={precision!r}: {why}; use precision=fp32 (32-true, the "
                          "default) or precision=bf16 (bf16-mixed)")
    deterministic = OmegaConf.select(cfg, "trainer.deterministic", default=None)
    if deterministic not in (None, True, False, "warn"):
        raise ConfigError(f"config field `trainer.deterministic` must be true, false or warn, got {deterministic!r}")


# dataset.synthetic's fields: make_synthetic's arguments (it checks their ranges itself)
SYNTHETIC_FIELDS = ("n_classes", "n_unseen", "n_val_classes", "semantic_dim", "feature_dim", "samples_per_class",
                    "seed")


def check_dataset_settings(cfg: DictConfig) -> None:
    """``dataset.name``, ``dataset.max_generator_epochs`` and a simulated dataset's ``dataset.synthetic``."""
    name = cfg.dataset.get("name")
    if isinstance(name, int) and not isinstance(name, bool):  # dataset.name=2017: a name, read as a number
        OmegaConf.update(cfg, "dataset.name", str(name))
        name = str(name)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"config field `dataset.name` must be a non-empty name, got {name!r}")
    cap = cfg.dataset.get("max_generator_epochs")
    if cap is not None:
        _number(cfg, "dataset.max_generator_epochs", minimum=1, integer=True)
    if cfg.dataset.kind != "synthetic":
        return
    synthetic = cfg.dataset.get("synthetic")
    if not OmegaConf.is_dict(synthetic):
        raise ConfigError(f"config field `dataset.synthetic` must hold the simulator's settings "
                          f"({', '.join(SYNTHETIC_FIELDS)}), got {synthetic!r}")
    for key in synthetic:
        if key not in SYNTHETIC_FIELDS:
            raise ConfigError(f"config field `dataset.synthetic.{key}` is not a simulator setting; "
                              f"{did_you_mean(key, SYNTHETIC_FIELDS)}the settings are {', '.join(SYNTHETIC_FIELDS)}")
        _number(cfg, f"dataset.synthetic.{key}", minimum=0, integer=True,
                maximum=MAX_SEED if key == "seed" else None)


def check_device_available(device: str, field: str, fix: str) -> None:
    """Refuse a CUDA device that torch cannot use, in one line naming ``field`` and the ``fix`` — instead of
    Lightning's ``MisconfigurationException`` or torch's assertion from deep inside."""
    import torch

    if not str(device).startswith(("cuda", "gpu")) or torch.cuda.is_available():
        return
    why = ("this torch is a CPU-only build" if torch.version.cuda is None else
           f"torch {torch.__version__} finds no usable NVIDIA GPU (none present, or no driver)")
    raise ConfigError(f"{field}: {why}; {fix}")


def trainer_device(cfg: DictConfig) -> str:
    """The device type a run's ``trainer.accelerator`` trains on: ``"cuda"`` for ``gpu``/``cuda`` (and for
    ``auto`` where torch sees a GPU, as Lightning picks), ``"cpu"`` for ``cpu`` (and ``auto`` without one)."""
    import torch

    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu"))
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if accelerator in ("gpu", "cuda") else accelerator


def check_torch_device(device: str) -> None:
    """The ``device=`` of zsl-eval and zsl-synthesize: ``cpu``, ``cuda`` or ``cuda:<index>``, usable here."""
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise ConfigError(f"config field `device` must be cpu, cuda or cuda:<index>, got {device!r}")
    check_device_available(device, f"device={device}", "use device=cpu (the default)")


def check_bf16_hardware(cfg: DictConfig, device: str | None = None,
                        fix: str = "use precision=fp32 (trainer.precision=32-true classifier.precision=fp32)") -> None:
    """Refuse bfloat16 where the hardware has no bf16 units (unless ``allow_slow_bf16=true``): there it is
    not a speed-up but a many-fold slow-down (``zsl_gen.runtime.native_bf16``). ``device``: ``"cpu"`` or
    ``"cuda"`` (default: from ``trainer.accelerator``); ``fix``: the message's remedy."""
    from zsl_gen.runtime import native_bf16

    allow = cfg.get("allow_slow_bf16", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"config field `allow_slow_bf16` must be true or false, got {allow!r}")
    trainer_precision = str(OmegaConf.select(cfg, "trainer.precision", default="32-true"))
    classifier_precision = str(OmegaConf.select(cfg, "classifier.precision", default="fp32"))
    fields = ([f"trainer.precision={trainer_precision}"] if "bf16" in trainer_precision else []) + (
        ["classifier.precision=bf16"] if classifier_precision == "bf16" else [])
    device = "cuda" if str(device or trainer_device(cfg)).startswith("cuda") else "cpu"
    if not fields or allow or native_bf16(device):
        return
    hardware = ("this GPU has no bfloat16 units (needs Ampere or newer)" if device == "cuda" else
                "this CPU has no bfloat16 units (no avx512_bf16/AMX): its bf16 matrix products run up to ~40x "
                "slower than fp32")
    raise ConfigError(f"{' and '.join(fields)}: {hardware}; {fix}, or add allow_slow_bf16=true to run bf16 anyway")
