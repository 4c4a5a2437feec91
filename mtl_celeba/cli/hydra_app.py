"""``@hydra.main`` for mtl-train and mtl-eval, with a one-second check of the command line first.

Before Hydra runs the task (and before torch and Lightning are imported, 20-30 s on a
small CPU), :func:`preflight` composes the config from the command line with Hydra's own
machinery and turns every mistake into one line and exit status 2:

- an unknown key (``data.imagesize=32``) or group option (``model=resnet19``), with a
  did-you-mean over the keys of that config node or the group's options; an
  ``experiment=``/``debug=`` option that does not exist (Hydra skips optional groups silently);
- an override Hydra cannot parse;
- a bad value (:mod:`mtl_celeba.cli.validate`);
- and, for ``resume=auto``, it finds the unfinished run to continue and points
  ``hydra.run.dir`` at it (see :mod:`mtl_celeba.run.resume`).

Anything unusual on the command line (``--help``, ``--config-dir``, ...) skips the check and
Hydra proceeds as usual.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from mtl_celeba.config import CONFIG_DIR, VERSION_BASE, is_multirun
from mtl_celeba.errors import ConfigError, UserError, did_you_mean, print_user_error
from mtl_celeba.run.resume import config_hash, find_resumable_run


class SweepJobError(CompactHydraException):
    """A sweep job's :class:`UserError`, which Hydra reports as one line, not a traceback."""


def one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def unknown_key_error(key: str, parent: Any) -> ConfigError:
    """``a.b`` is not a key, with a did-you-mean over the keys of node ``a``."""
    prefix, _, name = key.rpartition(".")
    keys = [str(k) for k in parent] if isinstance(parent, DictConfig) else []
    hint = did_you_mean(name, keys, prefix=f"{prefix}." if prefix else "")
    return ConfigError(
        f"{key} is not a config key.{hint} (To add a new key on purpose, write +{key}=...)"
    )


def composition_error(error: Exception) -> ConfigError:
    """Hydra's multi-line composition error as one :class:`ConfigError` line."""
    from hydra.errors import MissingConfigException, OverrideParseException

    cause = error.__cause__
    if isinstance(error, MissingConfigException) and error.options is not None:
        missing = str(error.missing_cfg_file or "")
        group, _, option = missing.rpartition("/")
        return ConfigError(
            f"{group}={option}: no such option in the {group} group.{did_you_mean(option, error.options)}"
            f" Options: {', '.join(error.options)}."
        )
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and getattr(
        cause, "full_key", None
    ):
        return unknown_key_error(str(cause.full_key), getattr(cause, "parent_node", None))
    if isinstance(error, OverrideParseException):
        return ConfigError(
            f"cannot parse the command line: {one_line(str(error)).split(' See https')[0]} "
            "(quote values with spaces or brackets, e.g. 'data.attributes=[Male,Smiling]')"
        )
    reason = f" {str(cause).splitlines()[0]}" if isinstance(cause, OmegaConfBaseException) else ""
    return ConfigError(one_line(str(error)) + reason)


def no_such_option(group: str, option: str, options: Sequence[str]) -> ConfigError:
    return ConfigError(
        f"{group}={option}: no such option in the {group} group."
        f"{did_you_mean(option, options)} Options: {', '.join(options)}."
    )


def check_group_choices(cfg: DictConfig) -> None:
    """A chosen option of an optional group (experiment, debug) that does not exist."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    for group, choice in choices(cfg).items():
        if choice is None or group.startswith("hydra/") or not isinstance(choice, str):
            continue
        options = loader.get_group_options(group)
        if options and choice not in options:
            raise no_such_option(group, choice, options)


def compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """The config Hydra will run, composed as for a multirun (sweep values left out)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.types import RunMode

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=VERSION_BASE):
            try:
                cfg = GlobalHydra.instance().hydra.compose_config(  # type: ignore[union-attr]
                    config_name,
                    list(overrides),
                    run_mode=RunMode.MULTIRUN,
                    validate_sweep_overrides=False,
                )
            except (HydraException, OmegaConfBaseException) as error:
                raise composition_error(error) from None
            check_group_choices(cfg)
            check_sweep_keys(cfg, overrides)
    finally:
        GlobalHydra.instance().clear()
    return cfg


def check_sweep_keys(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Keys of sweep overrides (``a.b=1,2``) exist, and so does every option of a group sweep
    (``model=resnet18,vgg16``): a multirun composes them only per job, where Hydra's error
    would end the sweep with a traceback and exit status 1.

    Values of keys are left to each job (its ``metrics.json`` records a bad one and the other
    jobs go on)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    groups = choices(cfg)
    loader = GlobalHydra.instance().config_loader()
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if not override.is_sweep_override() or override.is_add() or override.is_force_add():
            continue
        key = override.key_or_group
        if key in groups and override.value_type in (
            ValueType.CHOICE_SWEEP,
            ValueType.SIMPLE_CHOICE_SWEEP,
        ):
            options = loader.get_group_options(key)
            for option in override.sweep_string_iterator():
                if option != "null" and option not in options:
                    raise no_such_option(key, option, options)
            continue
        if "/" in key or key.startswith("hydra.") or OmegaConf.select(cfg, key) is not None:
            continue
        prefix, _, name = key.rpartition(".")
        parent = OmegaConf.select(cfg, prefix) if prefix else cfg
        if isinstance(parent, DictConfig) and name not in parent and key not in choices(cfg):
            raise unknown_key_error(key, parent)


def choices(cfg: DictConfig) -> dict[str, Any]:
    """The config-group choices of the composed config (``{group: option}``)."""
    return dict(OmegaConf.to_container(cfg.hydra.runtime.choices))  # type: ignore[arg-type]


def runs_folder(cfg: DictConfig) -> Path | None:
    """Where this command's run folders go (the parent of ``hydra.run.dir``)."""
    try:
        return Path(str(OmegaConf.select(cfg, "hydra.run.dir"))).parent
    except OmegaConfBaseException:
        return None


def resume_overrides(cfg: DictConfig, overrides: Sequence[str]) -> list[str]:
    """``resume=auto`` in a single run: ``hydra.run.dir=RUN`` for the run to continue, if any."""
    if cfg.get("resume") != "auto" or cfg.get("ckpt_path"):
        return []
    if any(o.lstrip("+~").startswith("hydra.run.dir=") for o in overrides):
        return []  # an explicit folder: train() resumes in it if it holds an unfinished run
    folder = runs_folder(cfg)
    run = find_resumable_run(folder, config_hash(cfg)) if folder else None
    if run is None:
        print(
            f"resume=auto: no unfinished run of this configuration in {folder}; "
            "training from scratch."
        )
        return []
    quoted = str(run).replace("\\", "\\\\").replace("'", "\\'")
    return [f"hydra.run.dir='{quoted}'"]


def preflight(
    config_name: str, argv: Sequence[str], validate: Callable[[DictConfig], None]
) -> list[str]:
    """Check the command line ``argv`` before Hydra runs; returns overrides to append.

    Raises :class:`ConfigError` (one line) for any mistake found.
    """
    from hydra._internal.utils import get_args_parser

    try:
        args = get_args_parser().parse_args(list(argv))
    except SystemExit:
        return []  # argparse already printed its usage error; let Hydra repeat it
    unusual = (
        args.help
        or args.hydra_help
        or args.info
        or args.shell_completion
        or args.config_path
        or args.config_dir
        or args.experimental_rerun
    )
    if unusual:
        return []
    name = args.config_name or config_name
    cfg = compose(name, args.overrides)
    task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    validate(task_cfg)
    from hydra.types import RunMode

    multirun = args.multirun or cfg.hydra.mode == RunMode.MULTIRUN
    if args.cfg:
        return []
    check_output_folder(cfg, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    if multirun:
        return []
    return resume_overrides(cfg, args.overrides)


def check_output_folder(cfg: DictConfig, key: str) -> None:
    """The run (or sweep) folder ``key`` names can be created and written: one line now, instead
    of Hydra's ``Errno 30``/``Errno 13`` traceback once it tries to."""
    try:
        folder = Path(str(OmegaConf.select(cfg, key))).expanduser().absolute()
    except OmegaConfBaseException:
        return
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return
    what = "is a file" if existing.exists() and not existing.is_dir() else "is not writable"
    where = "" if existing == folder else f" ({existing}, where it would be created, {what})"
    raise ConfigError(
        f"{key} {folder} cannot be written{where or ': it ' + what}: make it writable or point "
        f"{key} at a writable folder, e.g. {key}=$HOME/mtl-runs/run1 (nothing was written)."
    )


def hydra_entry(
    config_name: str, validate: Callable[[DictConfig], None]
) -> Callable[[Callable[[DictConfig], Any]], Callable[..., Any]]:
    """``@hydra.main(config_name=...)`` on conf/, preceded by :func:`preflight`.

    A :class:`UserError` in the job ends a single run with ``error: ...`` and exit status 2.
    In a sweep the job fails with that line (on stderr and in its log file) and the other
    jobs go on; Hydra then ends the sweep with status 1, which becomes 2 when every failed
    job of this process failed for a user's mistake (jobs that a launcher runs in other
    processes, such as gpu_pool's, keep Hydra's 1).
    """

    def decorator(task_function: Callable[[DictConfig], Any]) -> Callable[..., Any]:
        failures = {"user": 0, "other": 0}

        @functools.wraps(task_function)
        def job(cfg: DictConfig) -> Any:
            try:
                return task_function(cfg)
            except UserError as error:
                print_user_error(error)
                if not is_multirun():
                    raise SystemExit(2) from None
                failures["user"] += 1
                raise SweepJobError(str(error)) from None
            except Exception:
                failures["other"] += 1
                raise

        hydra_main = hydra.main(
            version_base=VERSION_BASE, config_path=str(CONFIG_DIR), config_name=config_name
        )(job)

        @functools.wraps(task_function)
        def main(cfg_passthrough: DictConfig | None = None) -> Any:
            if cfg_passthrough is not None:
                return hydra_main(cfg_passthrough)
            try:
                extra = preflight(config_name, sys.argv[1:], validate)
            except UserError as error:
                print_user_error(error)
                raise SystemExit(2) from None
            sys.argv.extend(extra)
            try:
                return hydra_main()
            except SystemExit as exit:
                if exit.code == 1 and failures["user"] and not failures["other"]:
                    raise SystemExit(2) from None
                raise

        return main

    return decorator
