"""Fail fast on config mistakes: check the types and ranges of the keys users set.

Runs on the composed config before anything heavy is imported (torch and Lightning take
20-30 s to import on a small CPU), so a typo costs a second, not half a minute. Pure:
no torch, no Lightning. Each rule names its key and the fix; the first broken rule raises
:class:`~mtl_celeba.errors.ConfigError` (one line, exit status 2 at the entry point).
Keys absent from the config (e.g. ``data.image_size`` in ``mtl-eval``) are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mtl_celeba.errors import ConfigError

_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    """``key`` must satisfy ``check``; ``need`` says what a valid value is, ``example`` one."""

    key: str
    check: Callable[[Any], bool]
    need: str
    example: str


def integer(low: int | None = None, high: int | None = None) -> Callable[[Any], bool]:
    """An int (not a bool, not a float) in ``[low, high]``."""

    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        return (low is None or value >= low) and (high is None or value <= high)

    return check


def number(
    low: float | None = None, *, above: float | None = None, below: float | None = None
) -> Callable[[Any], bool]:
    """An int or float ``>= low``, ``> above`` and ``< below`` (each bound optional)."""

    def check(value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return (
            (low is None or value >= low)
            and (above is None or value > above)
            and (below is None or value < below)
        )

    return check


def optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """``null`` or a value ``check`` accepts."""
    return lambda value: value is None or check(value)


def either(*checks: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A value any of ``checks`` accepts."""
    return lambda value: any(check(value) for check in checks)


def one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda value: value in choices


def boolean(value: Any) -> bool:
    return isinstance(value, bool)


def string(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def devices(value: Any) -> bool:
    """Lightning's ``devices``: auto, -1 (all), a count >= 1, a list of indices or "0,1"."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value == -1 or value >= 1
    if isinstance(value, str):
        text = value.strip()
        return (
            text == "auto"
            or text == "-1"
            or all(part.strip().isdigit() for part in text.rstrip(",").split(","))
        )
    if OmegaConf.is_list(value) or isinstance(value, list):
        return len(value) > 0 and all(integer(0)(index) for index in value)
    return False


#: data.label_values (the keys of mtl_celeba.data.celeba.LABEL_VALUES, not imported: pandas)
LABEL_VALUE_CHOICES = ("signed", "signed_0_missing", "binary")

#: Lightning's accelerator names (``cuda`` and ``gpu`` are the same).
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")

#: The trainer keys both commands have.
TRAINER_RULES: tuple[Rule, ...] = (
    Rule(
        "trainer.accelerator",
        one_of(*ACCELERATORS),
        f"one of {', '.join(ACCELERATORS)}",
        "trainer.accelerator=gpu",
    ),
    Rule(
        "trainer.devices",
        devices,
        "auto, -1 (all), a count >= 1 or a list of indices",
        "trainer.devices=1 or trainer.devices=[0,1]",
    ),
)

#: Keys of ``mtl-train`` (and of ``mtl-eval`` where present), with what they accept.
TRAIN_RULES: tuple[Rule, ...] = (
    Rule("seed", integer(0, 2**32 - 1), "an integer in [0, 2**32)", "seed=0"),
    Rule("resume", optional(one_of("auto")), "auto or null", "resume=auto"),
    Rule("test", boolean, "true or false", "test=true"),
    Rule("data.image_size", integer(16), "an integer >= 16 (pixels)", "data.image_size=64"),
    Rule("data.batch_size", integer(1), "an integer >= 1", "data.batch_size=128"),
    Rule("data.eval_batch_size", integer(1), "an integer >= 1", "data.eval_batch_size=256"),
    Rule(
        "data.num_workers",
        optional(integer(0)),
        "null (fit the machine) or an integer >= 0",
        "data.num_workers=4",
    ),
    Rule(
        "data.cache_workers",
        optional(integer(1)),
        "null or an integer >= 1",
        "data.cache_workers=2",
    ),
    # ranges of the synthetic generator's own keys are checked by the generator
    Rule("data.num_images", integer(), "an integer", "data.num_images=12000"),
    Rule("data.seed", integer(0, 2**32 - 1), "an integer in [0, 2**32)", "data.seed=0"),
    # a fraction, or a preset name such as celeba (the generator checks which presets exist)
    Rule(
        "data.label_noise",
        either(number(), string),
        "a number or a preset name",
        "data.label_noise=0.1",
    ),
    Rule("data.max_shift", integer(0), "an integer >= 0 (pixels)", "data.max_shift=4"),
    Rule("data.flip", boolean, "true or false", "data.flip=false"),
    Rule("data.pin_memory", boolean, "true or false", "data.pin_memory=false"),
    Rule("data.check_images", boolean, "true or false", "data.check_images=true"),
    Rule(
        "data.label_values",
        one_of(*LABEL_VALUE_CHOICES),
        f"one of {', '.join(LABEL_VALUE_CHOICES)}",
        "data.label_values=signed",
    ),
    Rule("data.hide_labels_seed", integer(0), "an integer >= 0", "data.hide_labels_seed=0"),
    Rule(
        "data.shuffle_seed",
        integer(0, 2**32 - 1),
        "an integer in [0, 2**32)",
        "data.shuffle_seed=0",
    ),
    *TRAINER_RULES,
    Rule("trainer.max_epochs", integer(1), "an integer >= 1", "trainer.max_epochs=4"),
    Rule(
        "trainer.min_epochs",
        optional(integer(0)),
        "null or an integer >= 0",
        "trainer.min_epochs=1",
    ),
    Rule(
        "trainer.check_val_every_n_epoch",
        optional(integer(1)),
        "an integer >= 1",
        "trainer.check_val_every_n_epoch=1",
    ),
    Rule(
        "trainer.log_every_n_steps", integer(1), "an integer >= 1", "trainer.log_every_n_steps=10"
    ),
    Rule(
        "trainer.num_sanity_val_steps",
        integer(-1),
        "an integer >= -1",
        "trainer.num_sanity_val_steps=0",
    ),
    Rule("model.backbone", string, "a backbone name", "model.backbone=resnet18"),
    Rule(
        "model.head_dropout",
        number(0.0, below=1.0),
        "a fraction in [0, 1)",
        "model.head_dropout=0.1",
    ),
    Rule("model.optimizer.lr", number(above=0.0), "a number > 0", "model.optimizer.lr=0.001"),
    Rule(
        "model.optimizer.weight_decay",
        number(0.0),
        "a number >= 0",
        "model.optimizer.weight_decay=0",
    ),
)

#: ``mtl-eval``: the shared keys above (those it has), plus its own.
EVAL_RULES: tuple[Rule, ...] = (
    Rule("split", one_of("val", "test"), "val or test", "split=test"),
    Rule("ckpt_path", string, "a checkpoint file", "ckpt_path=RUN/checkpoints/last.ckpt"),
    *(rule for rule in TRAIN_RULES if rule.key.startswith("data.")),
    *TRAINER_RULES,
)


def lookup(cfg: DictConfig, key: str) -> Any:
    """The value at ``key``, resolved; ``_ABSENT`` if the key is not in the config (or is
    ``???``, or refers to something only a running Hydra job can resolve)."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return _ABSENT
        if OmegaConf.is_missing(node, part):
            return _ABSENT
        try:
            node = node[part]
        except OmegaConfBaseException:
            return _ABSENT
    return node


def check_rules(cfg: DictConfig, rules: tuple[Rule, ...]) -> None:
    """Raise :class:`ConfigError` for the first key that breaks its rule."""
    for rule in rules:
        value = lookup(cfg, rule.key)
        if value is _ABSENT:
            continue
        if not rule.check(value):
            shown = f"{value!r}" if isinstance(value, str) else f"{value}"
            raise ConfigError(f"{rule.key} is {shown}: use {rule.need}, e.g. {rule.example}.")


def check_gpu_available(cfg: DictConfig) -> None:
    """``trainer.accelerator=gpu`` (or ``cuda``, as ``trainer=gpu`` sets) needs a visible GPU:
    one line now, not Lightning's instantiate traceback after the data is prepared. Imports torch
    only for such a config (a few seconds)."""
    accelerator = lookup(cfg, "trainer.accelerator")
    if accelerator not in ("gpu", "cuda"):
        return
    import torch

    if torch.cuda.is_available():
        return
    mps = getattr(torch.backends, "mps", None)
    if accelerator == "gpu" and mps is not None and mps.is_available():
        return  # Lightning's gpu accelerator is MPS on Apple silicon
    raise ConfigError(
        f"trainer.accelerator is {accelerator} (trainer=gpu) but no GPU is visible here "
        "(torch.cuda.is_available() is False): use trainer=cpu (or trainer.accelerator=auto), "
        "or run where a CUDA GPU is visible."
    )


def check_attributes_and_splits(cfg: DictConfig) -> None:
    """What can be known of the data before it is prepared: the attribute names (CelebA's 40;
    for real CelebA the columns of its attribute file's header, with a did-you-mean) and that
    each split has images (from ``data.num_images`` for synthetic data, from the partition
    file for real CelebA). Reads two header lines and the partition file, never the images."""
    from mtl_celeba.data.attributes import resolve_attributes
    from mtl_celeba.errors import DataError, did_you_mean

    attributes = lookup(cfg, "data.attributes")
    names = []
    if attributes is not _ABSENT:
        names = resolve_attributes(
            list(attributes) if OmegaConf.is_list(attributes) else [attributes]
        )
    task = lookup(cfg, "strategy.task")
    if task not in (_ABSENT, None):
        names = resolve_attributes([task], key="strategy.task")
    source, root = lookup(cfg, "data.source"), lookup(cfg, "data.root")
    if source == "synthetic":
        from mtl_celeba.data.synthetic import MAX_IMAGES, MIN_IMAGES, partition_sizes

        count = lookup(cfg, "data.num_images")
        if not isinstance(count, int) or isinstance(count, bool):
            return
        if not MIN_IMAGES <= count <= MAX_IMAGES:
            raise ConfigError(
                f"data.num_images is {count}: choose between {MIN_IMAGES} and {MAX_IMAGES} "
                "images (train, val and test each need some)."
            )
        sizes = dict(zip(("train", "val", "test"), partition_sizes(count), strict=True))
        where = f"data.num_images={count}"
    elif source == "celeba" and isinstance(root, str):
        from mtl_celeba.data.celeba import attribute_names, find_layout, split_sizes

        layout = find_layout(root)
        header = attribute_names(layout.attributes_file)
        for name in names:
            if name not in header:
                raise DataError(
                    f"{layout.attributes_file} has no column {name!r} named in data.attributes."
                    f"{did_you_mean(name, header, n=3)} Choose among the file's columns or use "
                    "a complete attribute file."
                )
        sizes = split_sizes(layout.partition_file)
        where = str(layout.partition_file)
    else:
        return
    empty = [split for split, size in sizes.items() if size == 0]
    if empty:
        raise DataError(
            f"the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} of {where} "
            f"{'have' if len(empty) > 1 else 'has'} no images ({sizes}): use more images, or "
            "a partition file with images in each of train (0), val (1) and test (2)."
        )


def validate_train_config(cfg: DictConfig) -> None:
    """Check ``mtl-train``'s config; raises :class:`ConfigError` naming the key and the fix."""
    check_rules(cfg, TRAIN_RULES)
    check_attributes_and_splits(cfg)
    check_gpu_available(cfg)
    epochs = (lookup(cfg, "trainer.min_epochs"), lookup(cfg, "trainer.max_epochs"))
    if isinstance(epochs[0], int) and epochs[0] > epochs[1]:
        raise ConfigError(
            f"trainer.min_epochs ({epochs[0]}) is above trainer.max_epochs ({epochs[1]}): "
            f"lower it, e.g. trainer.min_epochs=1."
        )


def validate_data_config(data: DictConfig) -> None:
    """Check the ``data`` keys alone (``mtl-eval`` merges them from the training run)."""
    check_rules(
        OmegaConf.create({"data": data}), tuple(r for r in TRAIN_RULES if r.key.startswith("data."))
    )


def validate_eval_config(cfg: DictConfig) -> None:
    """Check ``mtl-eval``'s config; a missing ``ckpt_path`` says how to pass one."""
    if lookup(cfg, "ckpt_path") in (_ABSENT, None):
        raise ConfigError(
            "mtl-eval needs a checkpoint: pass ckpt_path=outputs/train/runs/<time>/checkpoints/last.ckpt "
            "(any .ckpt written by mtl-train)."
        )
    check_rules(cfg, EVAL_RULES)
    check_gpu_available(cfg)


#: ``mtl-predict``'s keys.
PREDICT_RULES: tuple[Rule, ...] = (
    Rule("ckpt_path", string, "a checkpoint file", "ckpt_path=RUN/checkpoints/last.ckpt"),
    Rule("images", string, "a folder or a quoted glob", "images=photos/"),
    Rule("batch_size", integer(1), "an integer >= 1", "batch_size=64"),
    Rule("device", string, "auto, cpu, cuda or cuda:N", "device=cpu"),
    Rule("threshold", number(0.0, below=1.0), "a probability in [0, 1)", "threshold=0.5"),
    Rule("grid_images", integer(0), "an integer >= 0", "grid_images=24"),
)


def validate_predict_config(cfg: DictConfig) -> None:
    """Check ``mtl-predict``'s config; a missing ``ckpt_path`` or ``images`` says how to pass it."""
    for key, example in (
        ("ckpt_path", "ckpt_path=outputs/train/runs/<time>/checkpoints/last.ckpt"),
        ("images", "images=photos/ or images='photos/**/*.jpg'"),
    ):
        if lookup(cfg, key) in (_ABSENT, None):
            raise ConfigError(f"mtl-predict needs {key}: pass {example}.")
    check_rules(cfg, PREDICT_RULES)
