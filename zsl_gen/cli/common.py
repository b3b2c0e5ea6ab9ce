"""Shared CLI plumbing: user errors are printed as one clear line, without a traceback."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
from pathlib import Path
from typing import Callable, TypeVar

from zsl_gen.errors import DISK_FULL_BYTES, ConfigError, ZSLGenError, free_bytes

F = TypeVar("F", bound=Callable)

# where a multirun job sets an earlier job's outputs aside until it succeeds (zsl-train); zsl-report skips it
EARLIER_RUN = ".earlier_run"


class Terminated(SystemExit):
    """SIGTERM, raised by ``exit_on_sigterm``'s handler: exit status 143 (128 + SIGTERM), as a shell reports
    for a process the signal ended."""

    def __init__(self) -> None:
        super().__init__(143)


def report_user_errors(fn: F) -> F:
    """Run ``fn``; a ``ZSLGenError`` becomes ``error: <message>`` on stderr and exit status 2. A reader that
    closed stdout early (``zsl-data info ... | head -1``) ends the command quietly, as for any Unix tool.
    Ctrl-C and SIGTERM (with ``exit_on_sigterm``) end it with one line and status 130 or 143, after the
    cleanup of any half-written output has run."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            print("error: interrupted (Ctrl-C)", file=sys.stderr)
            sys.exit(130)  # 128 + SIGINT
        except Terminated:
            print("error: stopped by SIGTERM", file=sys.stderr)
            raise
        except ZSLGenError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except BrokenPipeError:
            # stdout is gone: point it at /dev/null so the interpreter's final flush does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)  # 128 + SIGPIPE, what the shell reports for a tool killed by the closed pipe
        except OSError as err:
            if err.filename is None:
                if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise
                # a writer that does not say which file (Python's own for an open file, numpy's, a logger's)
                print(f"error: {err.strerror}: free space on the disk being written, or write to another "
                      "directory", file=sys.stderr)
                sys.exit(2)
            # a path the checks before the work could not foresee (root writing under /proc, a full disk)
            print(f"error: {err.filename}: {err.strerror or err}; check the path and the free space, or choose "
                  "another path", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def exit_on_sigterm(fn: F) -> F:
    """Run ``fn`` with SIGTERM (``kill``, a batch system's time limit) raised as ``Terminated`` (a
    ``SystemExit(143)``), so that the cleanup of a half-written output (``except BaseException``/``finally``)
    runs as for Ctrl-C; the earlier handler is restored afterwards. Only in the main thread (where Python
    delivers signals). During ``Trainer.fit`` Lightning's handler, which calls this one after its own, stops
    training instead (at the next batch): called so, this one does nothing."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)

        def terminate(signum, frame):
            if signal.getsignal(signal.SIGTERM) is not terminate:
                # called by the handler in place, which chains this one: Lightning's during Trainer.fit, which
                # stops training at the next batch (raising here could cut a torch.save short)
                return
            raise Terminated

        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            return fn(*args, **kwargs)
        finally:  # (None: a handler installed from C, which Python cannot reinstall: the default then)
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    return wrapper  # type: ignore[return-value]


def override_key(override: str) -> str:
    """The key a Hydra command-line override sets, adds or deletes: ``++a.b=1``, ``+a.b=1``, ``~a.b`` → ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def optional_groups(config_name: str) -> set[str]:
    """The groups ``conf/<config_name>.yaml`` composes as ``null`` by default (``experiment``, ``debug``, ...):
    the only ones that ``<group>=null`` may leave out."""
    from omegaconf import OmegaConf

    from zsl_gen.config import CONF_DIR

    defaults = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{config_name}.yaml")).get("defaults", [])
    return {k for d in defaults if isinstance(d, dict) for k, v in d.items() if v is None}


def check_overrides(argv: list[str], config_name: str) -> None:
    """Before Hydra composes ``conf/<config_name>.yaml``: a group choice ``conf/`` lacks (``generator=fclswgen``)
    or a key no config has (``classifer.epochs=3``, ``generator.epoch=3``) is one ``error:`` line with the
    valid choices or the closest key, exit status 2. Hydra's own message is several lines and, for a key,
    advises a ``+`` that would only add a key no code reads. Sweep syntax (``choice(...)``, globs,
    interpolations) and ``hydra`` keys are left to Hydra."""
    from zsl_gen.config import CHECKED_GROUPS, CONF_DIR, config_groups, did_you_mean, known_fields

    other_configs = ("-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name", "-sc", "--shell-completion",
                     "--info", "-i")
    if any(a in other_configs or a.startswith(("--config-dir=", "--config-path=", "--config-name=", "hydra.searchpath",
                                                "+hydra.searchpath", "++hydra.searchpath")) for a in argv):
        return  # configs from elsewhere, or a Hydra command that takes no overrides: Hydra's to check
    groups = set(config_groups(config_name)) - {"hydra"}
    fields = known_fields(config_name)
    optional = optional_groups(config_name)

    def refuse(arg: str, message: str) -> None:
        print(f"error: {arg}: {message}", file=sys.stderr)
        sys.exit(2)

    for arg in argv:
        if arg.startswith("-") or "=" not in arg or arg.startswith(("+", "~")):
            continue  # flags; `+key=`/`~key` additions are checked after composing (config.check_known_fields)
        key, value = arg.split("=", 1)
        if key.split(".")[0].split("/")[0] == "hydra" or "@" in key:
            continue  # Hydra's own settings and package overrides (group@pkg=choice)
        if key in groups:
            if any(c in value for c in "()[]{}$*'\""):
                continue
            choices = sorted(f.stem for f in (CONF_DIR / key).glob("*.yaml"))
            for choice in value.split(","):
                if choice.strip() == "null" and key not in optional:
                    refuse(arg, f"the `{key}` group cannot be left out (null); pick one of {', '.join(choices)}")
                if choice.strip() not in (*choices, "null"):
                    hint = did_you_mean(choice.strip(), choices, lambda close: f"{key}={close}")
                    refuse(arg, f"no `{choice.strip()}` in conf/{key}/; {hint}the choices are {', '.join(choices)}")
            continue
        parts = key.split(".")
        if parts[0] == "trainer" and len(parts) == 2 and config_name == "train":
            from zsl_gen.config import TRAINER_SET_BY_ZSL_TRAIN

            if parts[1] in TRAINER_SET_BY_ZSL_TRAIN:  # (Hydra would advise `+trainer.<key>`, refused after composing)
                use = TRAINER_SET_BY_ZSL_TRAIN[parts[1]]
                refuse(arg, f"`trainer.{parts[1]}` is set by zsl-train itself and would be ignored; "
                            + (f"use {use}" if use else "remove it"))
        if parts[0] not in fields[""]:
            hint = did_you_mean(parts[0], fields[""], lambda close: f"`{'.'.join([close, *parts[1:]])}`")
            refuse(arg, f"`{parts[0]}` is not a setting of this command; {hint}the settings are {', '.join(fields[''])}")
        if parts[0] in CHECKED_GROUPS and parts[0] in groups and len(parts) > 1 and parts[1] not in fields[parts[0]]:
            hint = did_you_mean(parts[1], fields[parts[0]], lambda close: f"`{'.'.join([parts[0], close, *parts[2:]])}`")
            refuse(arg, f"`{parts[0]}.{parts[1]}` is not a {parts[0]} setting; {hint}the settings there are "
                        f"{', '.join(fields[parts[0]])}")


def check_fresh_run_dir(argv: list[str]) -> None:
    """A single run given ``hydra.run.dir=<dir>`` that already holds a run's results or checkpoints: one error
    line before Hydra starts (Hydra would overwrite that run's ``.hydra/config.yaml`` first, and the two runs'
    checkpoints, splits and logs would mix). Sweeps (``-m``) rerun into their job directories on purpose."""
    if any(a in ("-m", "--multirun") for a in argv) or \
            is_secondary_rank(given_value(argv, "hydra.job.name") or ""):
        return  # a rank > 0 works in rank 0's run directory
    given = given_value(argv, "hydra.run.dir")
    if given is None:
        return  # the default run directory is new (dated)
    run_dir = Path(given)  # (as Hydra takes it: no ~ expansion)
    found = [name for name in ("results.json", "checkpoints", "splits", "curves.json", "generator")
             if (run_dir / name).exists()]
    if found:
        print(f"error: hydra.run.dir={given}: already holds a run ({', '.join(found)}); give a new directory, or "
              "remove the old run first (to continue it, start a new directory with ckpt_path=<its last.ckpt>)",
              file=sys.stderr)
        sys.exit(2)


_HELD_RUN_DIRS: dict[Path, int] = {}  # run directory → the descriptor of its lock file, held by this process
_CREATED_FOR_LOCK: dict[Path, list[Path]] = {}  # run directory → the directories its lock created


def hold_run_dir(run_dir: Path) -> str | None:
    """Lock ``run_dir`` for this process: an exclusive ``flock`` of ``<run_dir>/.hydra/zsl-train.lock``, which
    the kernel releases when the process ends, however it ends (no stale lock after a kill). Returns None once
    held (again None when this process holds it already), or the pid another process wrote into the lock
    file while holding it: two runs in one directory would mix their checkpoints, split records and results,
    and one's cleanup of stale temporary checkpoints could delete the other's. Where ``fcntl`` is missing
    (Windows), nothing is locked."""
    try:
        import fcntl
    except ImportError:
        return None
    key = run_dir.resolve()
    if key in _HELD_RUN_DIRS:
        return None
    lock = key / ".hydra" / "zsl-train.lock"
    created = [d for d in (*reversed(lock.parent.parents), lock.parent) if not d.exists()]  # outermost first
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        return other
    except OSError as err:  # a file system without flock (NFS without lockd: ENOLCK; Lustre: ENOSYS)
        os.close(fd)
        import logging

        logging.getLogger("zsl_gen").warning("%s: cannot lock the run directory on this file system (%s); running "
                                             "without the lock: start no second run in it", key, err.strerror or err)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD_RUN_DIRS[key] = fd
    _CREATED_FOR_LOCK[key] = created
    return None


def release_run_dir(run_dir: Path | None = None) -> None:
    """Give up ``hold_run_dir``'s lock of ``run_dir`` (a finished job: the process may go on to other jobs, or,
    in a test or a notebook, run again), or every lock this process holds (None)."""
    keys = list(_HELD_RUN_DIRS) if run_dir is None else [run_dir.resolve()]
    for key in keys:
        fd = _HELD_RUN_DIRS.pop(key, None)
        if fd is not None:
            os.close(fd)
        created = _CREATED_FOR_LOCK.pop(key, [])
        lock = key / ".hydra" / "zsl-train.lock"
        # no job ran there (Hydra refused the command line before writing its .hydra/ files): leave no
        # directory behind that only the lock made
        if created and lock.parent.is_dir() and [p.name for p in lock.parent.iterdir()] == [lock.name]:
            lock.unlink(missing_ok=True)
            for directory in reversed(created):
                with contextlib.suppress(OSError):
                    directory.rmdir()  # (only if empty)


def busy_run_dir_message(what: str, pid: str) -> str:
    return (f"{what}: another zsl-train (pid {pid}) is running in that directory; wait for it to finish, or give "
            "a new directory (two runs in one directory would mix their checkpoints and results)")


# environment variables that number a process among several: Lightning's DDP children, torchrun, srun
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK")


def is_secondary_rank(job_name: str = "") -> bool:
    """This process is rank > 0 of a distributed run: it works in rank 0's run directory, under rank 0's lock.
    Lightning starts its DDP children as Hydra jobs named ``train_ddp_process_<rank>``; torchrun and srun
    start every rank with the same command line and number them in the environment."""
    if job_name.startswith("train_ddp_process"):
        return True
    return any(os.environ.get(var, "0").strip() not in ("", "0") for var in RANK_VARIABLES)


def given_value(argv: list[str], key: str) -> str | None:
    """The last ``key=<value>`` of the command line (quotes stripped), or None."""
    values = [a.split("=", 1)[1].strip("'\"") for a in argv if "=" in a and override_key(a) == key]
    return values[-1] if values else None


def hold_given_run_dir(argv: list[str]) -> None:
    """``hold_run_dir`` for a single run's ``hydra.run.dir=<dir>`` before Hydra starts, which would first
    overwrite the running one's ``.hydra/config.yaml``; one error line if another process holds it. (Runs in
    Hydra's default dated directory, directories given with interpolations and multirun jobs are locked by
    ``train_app``.)"""
    if only_shows(argv) or any(a in ("-m", "--multirun") for a in argv) or \
            is_secondary_rank(given_value(argv, "hydra.job.name") or ""):
        return
    given = given_value(argv, "hydra.run.dir")
    if given is not None and "${" not in given:
        other = hold_run_dir(Path(given))
        if other is not None:
            print(f"error: {busy_run_dir_message(f'hydra.run.dir={given}', other)}", file=sys.stderr)
            sys.exit(2)


def only_shows(argv: list[str]) -> bool:
    """The command line only shows the composed config or help (Hydra's flags): no job runs, nothing is written."""
    return any(a in ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help") or a.startswith(("--cfg=", "--info="))
               for a in argv)


def check_run_dir_disk(argv: list[str]) -> None:
    """The disk of the run directory (``hydra.run.dir``, ``hydra.sweep.dir`` with ``-m``, else ``paths.log_dir``,
    under which Hydra's dated run directories go) takes writes and is not full: one error line before Hydra
    starts, which writes its ``.hydra/`` config first and reports a full or read-only disk as a traceback."""
    if only_shows(argv):
        return
    key = "hydra.sweep.dir" if any(a in ("-m", "--multirun") for a in argv) else "hydra.run.dir"
    given = given_value(argv, key)
    if given is None:  # the configs' default: under paths.log_dir (conf/paths: $ZSL_OUTPUT_DIR, else outputs/)
        key = "paths.log_dir"
        given = given_value(argv, key) or os.environ.get("ZSL_OUTPUT_DIR") or "outputs"
    if "${" in given:
        return  # an interpolation: Hydra resolves it (a full disk then fails in one line at the first write)
    run_dir = Path(given)  # (as Hydra takes it: no ~ expansion)
    what = f"{key}="
    try:
        check_output_path(run_dir, what, directory=True)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    free = free_bytes(run_dir)
    if free is not None and free < DISK_FULL_BYTES:
        print(f"error: {what}{given}: its disk is full ({free / 2**20:.1f} MiB free); free space there, or give "
              f"another directory ({key}=<dir>)", file=sys.stderr)
        sys.exit(2)


def check_output_path(path: Path, what: str, *, directory: bool, example: str = "out.json") -> None:
    """Refuse, before any work is done, an output ``path`` that cannot be written: an existing path of the
    other kind (a file where a directory is asked for, or the reverse), an existing ancestor that is a file,
    or a nearest existing ancestor this process may not write into. ``what``: the flag or key naming it.
    """
    path = Path(path)
    name = f"{what}{path}" if what.endswith("=") else f"{what} {path}"
    kind = "directory" if directory else "file"
    if path.exists():
        if path.is_dir() != directory:
            fix = "give a directory path (it is created)" if directory else f"give a file path, e.g. {path / example}"
            raise ConfigError(f"{name}: {'exists and is a file' if directory else 'is a directory'}; {fix}")
        return
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{name}: {parent} is a file, not a directory; give a {kind} path whose parent "
                                  "directories are directories")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{name}: no permission to create it in {parent}; choose another path")
            return
