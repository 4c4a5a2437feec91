"""A trained model from a checkpoint, or one line saying what is wrong with the file.

``mtl-eval``, ``mtl-predict`` and ``mtl-train ckpt_path=...`` all load checkpoints through
here. Besides the checks of :func:`mtl_celeba.run.resume.load_checkpoint` (missing, truncated,
junk, not a checkpoint), a checkpoint from another version of the model is refused by name:
hyperparameters this version does not take (Lightning would drop them silently), required ones
it lacks, and weights (``state_dict`` keys or shapes) that do not fit the model they describe
(Lightning would end in a ``RuntimeError`` traceback listing hundreds of keys).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtl_celeba.errors import ConfigError, UserError
from mtl_celeba.run.resume import load_checkpoint

if TYPE_CHECKING:
    import torch

    from mtl_celeba.models.module import MultiTaskModule

#: How many key names a message lists before "...".
SHOWN_KEYS = 3


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_KEYS])
    return shown + (", ..." if len(names) > SHOWN_KEYS else "")


def hyperparameter_problem(
    hparams: Mapping[str, Any], accepted: Iterable[str], required: Iterable[str]
) -> str | None:
    """What is wrong with a checkpoint's ``hparams`` for a model taking ``accepted`` arguments
    (``required`` of them without a default), or None."""
    unknown = sorted(set(hparams) - set(accepted))
    missing = sorted(set(required) - set(hparams))
    parts = []
    if unknown:
        parts.append(f"hyperparameters this version does not take: {_listed(unknown)}")
    if missing:
        parts.append(f"no value for {_listed(missing)}")
    return "; ".join(parts) or None


def state_dict_problem(expected: Iterable[str], found: Iterable[str]) -> str | None:
    """What differs between the weights a model has (``expected``) and a checkpoint's, or None."""
    expected, found = set(expected), set(found)
    missing, extra = sorted(expected - found), sorted(found - expected)
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing ({_listed(missing)})")
    if extra:
        parts.append(f"{len(extra)} weights the model does not have ({_listed(extra)})")
    return "; ".join(parts) or None


def _model_arguments() -> tuple[list[str], list[str]]:
    """The arguments of ``MultiTaskModule`` a checkpoint may record, and those without a default."""
    from mtl_celeba.models.module import MultiTaskModule

    parameters = list(inspect.signature(MultiTaskModule.__init__).parameters.values())[1:]
    accepted = [p.name for p in parameters]
    required = [p.name for p in parameters if p.default is inspect.Parameter.empty]
    return accepted, required


def _foreign(path: Path, key: str, problem: str) -> ConfigError:
    return ConfigError(
        f"{key} {path} is a checkpoint of another version of the model ({problem}): pass a "
        ".ckpt written by this version of mtl-train, or retrain."
    )


def check_hyperparameters(
    path: str | Path, state: Mapping[str, Any], key: str = "ckpt_path"
) -> None:
    """One line if the checkpoint's hyperparameters are not this version's model's."""
    problem = hyperparameter_problem(state["hyper_parameters"], *_model_arguments())
    if problem:
        raise _foreign(Path(path), key, problem)


def check_weights_fit(
    path: str | Path, model: torch.nn.Module, state: Mapping[str, Any], key: str = "ckpt_path"
) -> None:
    """One line if the checkpoint's ``state_dict`` has other keys or shapes than ``model``'s."""
    weights = state["state_dict"]
    problem = state_dict_problem(model.state_dict().keys(), weights.keys())
    if problem is None:
        shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
        wrong = [
            f"{name} {tuple(weights[name].shape)} instead of {shape}"
            for name, shape in shapes.items()
            if hasattr(weights[name], "shape") and tuple(weights[name].shape) != shape
        ]
        problem = f"weights of other shapes: {_listed(wrong)}" if wrong else None
    if problem:
        raise _foreign(Path(path), key, problem)


def check_trained_model(path: str | Path, model: torch.nn.Module, key: str = "ckpt_path") -> None:
    """``mtl-train ckpt_path=...``: the checkpoint's hyperparameters and weights fit ``model``
    (built from the config), before Lightning restores it."""
    state = load_checkpoint(path, key)
    check_hyperparameters(path, state, key)
    check_weights_fit(path, model, state, key)


def load_model(path: str | Path, key: str = "ckpt_path") -> MultiTaskModule:
    """The trained model of checkpoint ``path`` on the CPU; one line for anything wrong."""
    from mtl_celeba.models.module import MultiTaskModule

    state = load_checkpoint(path, key)
    check_hyperparameters(path, state, key)
    try:
        # weights=None: the checkpoint holds the trained weights; never download pretrained ones
        with warnings.catch_warnings():  # its "Found keys that are..." lines: ours says it once
            warnings.filterwarnings("ignore", message="Found keys that are")
            model = MultiTaskModule.load_from_checkpoint(
                path, map_location="cpu", weights=None, strict=False
            )
    except UserError:
        raise
    except Exception as error:  # e.g. a size mismatch, which strict=False still raises
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = (" ".join(lines) or type(error).__name__)[:200]
        raise _foreign(Path(path), key, reason) from None
    check_weights_fit(path, model, state, key)
    return model
