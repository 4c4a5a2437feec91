"""Backbone factory: any torchvision classification model, classifier removed, pooled features out.

``build_backbone(name, weights, freeze)`` is what ``model.backbone``, ``model.weights`` and
``model.freeze`` configure. Three things it works out for any torchvision classifier, not from
per-model tables:

- the features: the classifier is removed and the globally pooled features are the output;
- ``depth``: weight layers (conv/linear) on the longest input-to-features path, which DST's
  depth term needs;
- blocks: the ordered groups of layers that ``freeze=N`` counts from the top.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, fx, nn
from torchvision.models import VGG, AlexNet, SqueezeNet

from mtl_celeba.errors import ConfigError, did_you_mean

log = logging.getLogger(__name__)

BACKBONE_KEY = "model.backbone"
WEIGHTS_KEY = "model.weights"
FREEZE_KEY = "model.freeze"

#: Attributes that hold the final classifier in torchvision's classification models.
CLASSIFIER_ATTRIBUTES = ("fc", "classifier", "heads", "head")

#: Auxiliary classifiers used only for training losses (GoogLeNet, Inception v3).
AUX_CLASSIFIER_ATTRIBUTES = ("aux1", "aux2", "AuxLogits")

#: Containers whose children are freezing blocks, rather than being one block each: the
#: ``features`` Sequential of VGG, AlexNet, SqueezeNet, DenseNet, MobileNet, EfficientNet, ConvNeXt
#: and Swin, RegNet's ``trunk_output``, MNASNet's ``layers``, MaxViT's ``blocks``, and ViT's
#: ``encoder`` with its ``encoder.layers``. Paths are relative to the torchvision model.
STAGE_CONTAINERS = frozenset(
    {"features", "trunk_output", "layers", "blocks", "encoder", "encoder.layers"}
)

#: Files that hold a state_dict, so that a value such as ``resnet18.pth`` is read as a path.
STATE_DICT_SUFFIXES = (".pth", ".pt", ".ckpt")

#: Key prefixes that wrappers add to a model's state_dict (DataParallel, torch.compile,
#: this project's Backbone); removed while every key carries one.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass(frozen=True)
class Block:
    """One unit of freezing: submodules and loose parameters of the torchvision model, by name."""

    modules: tuple[str, ...]
    parameters: tuple[str, ...] = ()


class Backbone(nn.Module):
    """A torchvision classification model with its classifier removed.

    Maps images ``(B, 3, H, W)`` to pooled features ``(B, out_features)``. Frozen blocks (see
    :meth:`freeze`) stay in eval mode when the module is put in train mode, so their BatchNorm
    statistics and dropout do not change: a frozen backbone is a fixed feature extractor.
    """

    def __init__(self, name: str, model: nn.Module, out_features: int) -> None:
        super().__init__()
        self.name = name
        self.model = model
        self.out_features = out_features
        self.depth = weight_layer_depth(model)
        self.blocks = feature_blocks(model)
        self.frozen_modules: tuple[str, ...] = ()

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def freeze(self, trainable_blocks: int | None) -> None:
        """Freeze all but the last ``trainable_blocks`` blocks; ``None`` trains every block.

        Frozen parameters get ``requires_grad=False`` and frozen modules stay in eval mode.
        Calling it again with a larger count unfreezes blocks (gradual fine-tuning).
        """
        count = len(self.blocks) if trainable_blocks is None else trainable_blocks
        if not 0 <= count <= len(self.blocks):
            raise ValueError(f"trainable_blocks must be in 0..{len(self.blocks)}, got {count}")
        frozen_blocks = self.blocks[: len(self.blocks) - count]
        for parameter in self.parameters():
            parameter.requires_grad_(True)
        for block in frozen_blocks:
            for name in block.modules:
                self.model.get_submodule(name).requires_grad_(False)
            for name in block.parameters:
                self.model.get_parameter(name).requires_grad_(False)
        self.frozen_modules = tuple(name for block in frozen_blocks for name in block.modules)
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for name in self.frozen_modules:
            self.model.get_submodule(name).train(False)
        return self


def build_backbone(
    name: str, weights: str | None = None, freeze: str | int | None = None
) -> Backbone:
    """Build torchvision model ``name`` without its classifier, with weights and freezing applied.

    ``weights``: ``None`` (random init), a torchvision weights name (``IMAGENET1K_V1``,
    ``DEFAULT``; downloaded on first use), or a path to a state_dict file (see
    :func:`load_state_dict_file`). ``freeze``: ``None``/``"none"`` (train everything),
    ``"all"`` (a linear probe), or ``N`` (train only the last N blocks).
    Every bad value raises :class:`ConfigError` naming its ``model.*`` key.
    """
    name = check_backbone_name(name)
    trainable_blocks = parse_freeze(freeze)  # checked first: no model is built for a typo
    weights_name, weights_file = parse_weights(weights)
    if name in CUSTOM_BACKBONES:
        if weights_name is not None:
            raise ConfigError(
                f"{WEIGHTS_KEY}={weights_name}: {name} has no published weights; use null (from "
                "scratch) or a path to a state_dict file."
            )
        build, out_features = CUSTOM_BACKBONES[name]
        model = build()
        full_keys = set(model.state_dict())
    else:
        model = _torchvision_model(name, weights_name)
        full_keys = set(model.state_dict())
        out_features = remove_classifier(model, name)
    if weights_file is not None:
        load_state_dict_file(model, weights_file, name, ignore=full_keys - set(model.state_dict()))
    backbone = Backbone(name, model, out_features)
    if trainable_blocks is not None and trainable_blocks > len(backbone.blocks):
        raise ConfigError(
            f"{FREEZE_KEY}={trainable_blocks} asks for more trainable blocks than {name} has "
            f"({len(backbone.blocks)}): use a number from 0 to {len(backbone.blocks)}, or null "
            "to train everything."
        )
    backbone.freeze(trainable_blocks)
    return backbone


def famo_cnn() -> nn.Module:
    """FAMO's CelebA network (Liu et al., NeurIPS 2023; ``experiments/celeba/models.py`` of
    github.com/Cranial-XIX/FAMO): seven 3x3 conv+BN+ReLU layers (64-128-128-256-256-512-512
    channels, 2x2 max-pooling after the 1st, 3rd and 5th), global average pooling, and two
    512-wide linear+BN+ReLU layers; 512 features out (9 weight layers)."""

    def conv(channels_in: int, channels_out: int) -> list[nn.Module]:
        return [
            nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels_out),
            nn.ReLU(inplace=True),
        ]

    def linear() -> list[nn.Module]:
        return [nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *conv(3, 64), nn.MaxPool2d(2),
        *conv(64, 128), *conv(128, 128), nn.MaxPool2d(2),
        *conv(128, 256), *conv(256, 256), nn.MaxPool2d(2),
        *conv(256, 512), *conv(512, 512), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        *linear(), *linear(),
    )  # fmt: skip


def cpu_cnn() -> nn.Module:
    """A small network for 32 px images on a CPU: four 3x3 conv+BN+ReLU stages (16-32-64-128
    channels, the first three each followed by 2x2 max-pooling: 32 -> 4 px), global average
    pooling; 128 features out, 0.1 M weights, about 4 M multiply-adds per 32 px image (about
    1 M in each stage)."""

    def stage(channels_in: int, channels_out: int, pool: bool) -> list[nn.Module]:
        layers = [
            nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels_out),
            nn.ReLU(inplace=True),
        ]
        return layers + ([nn.MaxPool2d(2)] if pool else [])

    return nn.Sequential(
        *stage(3, 16, True), *stage(16, 32, True), *stage(32, 64, True), *stage(64, 128, False),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


#: Backbones that are not torchvision models: name -> (builder, width of the features).
CUSTOM_BACKBONES = {"famo_cnn": (famo_cnn, 512), "cpu_cnn": (cpu_cnn, 128)}


def check_backbone_name(name: str) -> str:
    """Return ``name`` if it is a torchvision classification model, else raise with suggestions."""
    known = torchvision.models.list_models(module=torchvision.models)
    if name in known or name in CUSTOM_BACKBONES:
        return name
    raise ConfigError(
        f"{BACKBONE_KEY}={name} is not a torchvision classification model."
        f"{did_you_mean(str(name).lower(), known, n=3)} "
        f"Choose one of torchvision.models.list_models(module=torchvision.models), e.g. resnet18 "
        "or vgg16."
    )


def parse_freeze(freeze: str | int | None) -> int | None:
    """Turn ``model.freeze`` into the number of trainable blocks (``None``: all of them)."""
    if freeze is None or (isinstance(freeze, str) and freeze.strip().lower() == "none"):
        return None
    if isinstance(freeze, str) and freeze.strip().lower() == "all":
        return 0
    if isinstance(freeze, str) and freeze.strip().isdigit():
        freeze = int(freeze)
    if not isinstance(freeze, int) or isinstance(freeze, bool) or freeze < 0:
        raise ConfigError(
            f"{FREEZE_KEY}={freeze!r} is not valid: use null (train everything), all (freeze the "
            "whole backbone: a linear probe) or an integer N >= 0 (train only its last N blocks)."
        )
    return freeze


def parse_weights(weights: str | os.PathLike | None) -> tuple[str | None, Path | None]:
    """Split ``model.weights`` into a torchvision weights name or an existing state_dict file.

    A value is a path if it contains a slash, ends in .pth/.pt/.ckpt, or names an existing file;
    ``None`` and ``"none"`` mean random initialisation.
    """
    if weights is None or str(weights).strip().lower() == "none":
        return None, None
    weights = str(weights)
    if not _looks_like_path(weights):
        return weights, None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"{WEIGHTS_KEY}={weights} does not exist: give the path to a state_dict file "
            "(.pth), a torchvision weights name such as IMAGENET1K_V1, or null."
        )
    return None, path


def _looks_like_path(weights: str) -> bool:
    return (
        "/" in weights
        or os.sep in weights
        or weights.endswith(STATE_DICT_SUFFIXES)
        or Path(weights).expanduser().exists()
    )


def _torchvision_model(name: str, weights: str | None) -> nn.Module:
    """``torchvision.models.get_model(name, weights=...)`` with user-facing errors for weights."""
    if weights is None:
        return torchvision.models.get_model(name, weights=None)
    weights_enum = torchvision.models.get_model_weights(name)
    try:
        weight = weights_enum.verify(weights)
    except (KeyError, ValueError):
        valid = ", ".join([member.name for member in weights_enum] + ["DEFAULT"])
        raise ConfigError(
            f"{WEIGHTS_KEY}={weights} is not a weights name for {name}: use one of {valid}, "
            "a path to a state_dict file, or null to train from scratch."
        ) from None
    file_name = Path(weight.url).name
    try:
        return torchvision.models.get_model(name, weights=weight)
    except OSError as error:  # URLError and socket errors are OSErrors
        raise ConfigError(
            f"{WEIGHTS_KEY}={weights}: could not download {weight} for {name} ({error}); this "
            f"machine seems to be offline. Download {weight.url} on a machine that is online and "
            f"pass the file with {WEIGHTS_KEY}=/path/to/{file_name}, or set {WEIGHTS_KEY}=null "
            "to train from scratch."
        ) from error
    except RuntimeError as error:  # torch.hub's hash check, or a damaged cached file
        cached = Path(torch.hub.get_dir()) / "checkpoints" / file_name
        raise ConfigError(
            f"{WEIGHTS_KEY}={weights}: the downloaded {weight} for {name} could not be loaded "
            f"({error}). Delete {cached} and try again, or pass a local file with "
            f"{WEIGHTS_KEY}=/path/to/{file_name}."
        ) from error


def remove_classifier(model: nn.Module, name: str) -> int:
    """Remove ``model``'s classifier in place so it returns pooled features; return their size.

    VGG and AlexNet lose their whole classifier, hidden fully connected layers included, and
    global average pooling over the last conv features takes its place (512 features for VGG16
    instead of 25088 inputs to a 4096-wide MLP): the heads stay small, nearly all of VGG's
    parameters (the 102M-weight first FC layer) go, and any input size works, not only 224.
    SqueezeNet, whose classifier is a conv, is pooled the same way. For every other family the
    final Linear layer of ``fc``, ``classifier``, ``heads`` or ``head`` is removed, keeping the
    layers before it (e.g. MobileNetV3's 1024-wide pre-logits layer). Auxiliary training
    classifiers (GoogLeNet, Inception v3) are removed too.
    """
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for attribute in AUX_CLASSIFIER_ATTRIBUTES:
            if hasattr(model, attribute):
                setattr(model, attribute, None)
    if isinstance(model, VGG | AlexNet):
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Identity()
        return _last_of(model.features, nn.Conv2d).out_channels
    if isinstance(model, SqueezeNet):
        final_conv = _last_of(model.classifier, nn.Conv2d)
        model.classifier = nn.AdaptiveAvgPool2d(1)
        return final_conv.in_channels
    for attribute in CLASSIFIER_ATTRIBUTES:
        classifier = getattr(model, attribute, None)
        if isinstance(classifier, nn.Linear):
            setattr(model, attribute, nn.Identity())
            return classifier.in_features
        if isinstance(classifier, nn.Sequential) and any(
            isinstance(layer, nn.Linear) for layer in classifier
        ):
            layers = list(classifier.named_children())
            last = max(i for i, (_, layer) in enumerate(layers) if isinstance(layer, nn.Linear))
            setattr(model, attribute, nn.Sequential(OrderedDict(layers[:last])))
            return layers[last][1].in_features
    raise ConfigError(
        f"{BACKBONE_KEY}={name}: found no final Linear classifier in any of "
        f"{', '.join(CLASSIFIER_ATTRIBUTES)}, so the features cannot be taken from it; "
        "choose another backbone."
    )


def _last_of(module: nn.Module, kind: type[nn.Module]) -> Any:
    return [layer for layer in module.modules() if isinstance(layer, kind)][-1]


def load_state_dict_file(
    model: nn.Module, path: Path, name: str, ignore: Collection[str] = ()
) -> None:
    """Load a state_dict file into ``model``, torchvision's ``name`` without its classifier.

    Accepted contents, read with ``torch.load(weights_only=True)``:

    - the state_dict of the full torchvision model, as torchvision's downloads are
      (``resnet18-f37072fd.pth``); its classifier keys (``ignore``) are skipped, so the
      number of classes it was trained for does not matter;
    - the state_dict of a :class:`Backbone` (keys ``model.*``);
    - the state_dict of this project's multi-task model, of which only the ``backbone.*`` keys
      are used, so a trained backbone can start a new run; also inside a dict under
      ``state_dict``, as checkpoints hold it. A Lightning ``.ckpt`` itself holds more than
      tensors (its hyperparameters), which ``weights_only`` loading refuses: extract its
      ``state_dict`` into a file first (the error message says how).

    Prefixes that wrappers add (``module.``, ``_orig_mod.``, ``model.``) are removed while every
    key carries one. Anything else must match the model exactly: a missing, unknown or
    differently shaped tensor raises :class:`ConfigError`.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a file it cannot read
        reason = f"{type(error).__name__}: {str(error).split('. ')[0]}"
        raise ConfigError(
            f"{WEIGHTS_KEY}={path} could not be read as a PyTorch state_dict of tensors "
            f"({reason}). Save one with torch.save(model.state_dict(), path); for a Lightning "
            "checkpoint you trust: torch.save(torch.load(ckpt, weights_only=False)"
            "['state_dict'], 'weights.pth') and pass weights.pth."
        ) from error
    state = _backbone_state(state, path)
    state = {key: value for key, value in state.items() if key not in ignore}
    expected = model.state_dict()
    missing = [key for key in expected if key not in state and not _optional_key(key)]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {tuple(state[key].shape)} instead of {tuple(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(
                f"{len(missing)} of its {len(expected)} tensors are missing from the file "
                f"(e.g. {', '.join(missing[:3])})"
            )
        if unexpected:
            problems.append(
                f"the file has {len(unexpected)} tensors it does not have "
                f"(e.g. {', '.join(unexpected[:3])})"
            )
        if mismatched:
            problems.append(f"{len(mismatched)} differ in shape (e.g. {mismatched[0]})")
        raise ConfigError(
            f"{WEIGHTS_KEY}={path} does not fit {BACKBONE_KEY}={name}: {'; '.join(problems)}. "
            f"The file seems to be for another model{_name_hint(path, name)}: set "
            f"{BACKBONE_KEY} to the model it was saved from."
        )
    # Not strict: a file without num_batches_tracked is complete; BatchNorm fills it in.
    model.load_state_dict(state, strict=False)


def _backbone_state(state: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(value, Tensor) for key, value in state.items()
    ):
        raise ConfigError(
            f"{WEIGHTS_KEY}={path} holds a {type(state).__name__}, not a state_dict of tensors: "
            "save one with torch.save(model.state_dict(), path)."
        )
    if any(key.startswith("backbone.") for key in state):
        state = {
            key.removeprefix("backbone."): v
            for key, v in state.items()
            if key.startswith("backbone.")
        }
    for prefix in WRAPPER_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key.removeprefix(prefix): value for key, value in state.items()}
    return dict(state)


def _optional_key(key: str) -> bool:
    # Older torchvision files predate BatchNorm's num_batches_tracked; loading fills it in.
    return key.endswith("num_batches_tracked")


def _name_hint(path: Path, name: str) -> str:
    # torchvision names its weight files after the model: resnet50-0676ba61.pth.
    stem = path.name.split("-")[0].split(".")[0]
    known = torchvision.models.list_models(module=torchvision.models)
    return f" (its name suggests {stem})" if stem in known and stem != name else ""


def weight_layer_depth(model: nn.Module) -> int:
    """Weight layers (conv/linear) on the longest path from ``model``'s input to its output.

    The model is traced with ``torch.fx`` (torchvision classifiers are traceable; their feature
    extraction API relies on it) and a longest-path pass over the nodes that depend on the
    images counts, per node, the conv/linear modules it calls (a MultiheadAttention counts 2:
    in- and out-projection) and the conv/linear weights it reads (Swin's attention uses them
    functionally). Shortcuts such as ResNet's 1x1 downsample convs lie on shorter paths, so
    resnet18 gives 17, resnet50 49, densenet121 120 and vgg16 13.
    If tracing fails, every conv/linear layer is counted instead, an upper bound that is exact
    for plain chains such as VGG but too high for models with parallel branches.
    """
    try:
        graph_module = fx.symbolic_trace(model)
    except Exception as error:  # fx raises many types for untraceable Python
        log.warning(
            "could not trace %s with torch.fx (%s); its depth counts all of its conv/linear "
            "layers, not only those on the longest path",
            type(model).__name__,
            error,
        )
        return sum(_own_weight_layers(module) for module in model.modules())
    # Only paths that start at the images count: Swin v2's position-bias MLP, for one, reads
    # a constant table and would otherwise add its layers to the depth.
    depth: dict[fx.Node, int] = {}
    for node in graph_module.graph.nodes:
        reached = [depth[source] for source in node.all_input_nodes if source in depth]
        if node.op == "placeholder" or reached:
            depth[node] = max(reached, default=0) + _node_weight_layers(model, node)
    return next(depth[node] for node in graph_module.graph.nodes if node.op == "output")


def _node_weight_layers(model: nn.Module, node: fx.Node) -> int:
    # Node targets are paths in the traced model; look them up there, as the GraphModule holds
    # plain Module stand-ins for the owners of the parameters it reads.
    if node.op == "call_module":
        leaf = model.get_submodule(node.target)
        return sum(_own_weight_layers(module) for module in leaf.modules())
    if node.op in ("call_function", "call_method"):
        return sum(
            1
            for source in node.all_input_nodes
            if source.op == "get_attr" and _is_layer_weight(model, source.target)
        )
    return 0


def _own_weight_layers(module: nn.Module) -> int:
    # MultiheadAttention's in-projection is a bare parameter; its out_proj is a Linear child.
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear | nn.MultiheadAttention):
        return 1
    return 0


def _is_layer_weight(model: nn.Module, target: str) -> bool:
    owner, _, attribute = target.rpartition(".")
    if attribute != "weight":
        return False
    try:
        module = model.get_submodule(owner)
    except AttributeError:
        return False
    return isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)


def feature_blocks(model: nn.Module) -> list[Block]:
    """Group ``model``'s layers into blocks, from the input side to the output side.

    The candidates are the model's top-level children that hold parameters, where a container
    in :data:`STAGE_CONTAINERS` (e.g. VGG's ``features``) is replaced by its children. Each
    candidate that contains a conv/linear layer starts a block; one without (a BatchNorm,
    LayerNorm) joins the block before it. So ResNet has 5 blocks (conv1+bn1, layer1..layer4),
    VGG16 13 (one per conv with its ReLU; with BN for vgg16_bn). Parameters held directly by
    the model or a stage container (ViT's class token and position embedding) join the first
    block, as they act on the input side.
    """
    blocks: list[tuple[list[str], list[str]]] = []
    for path, module in _candidates(model, ""):
        if next(module.parameters(), None) is None:
            continue
        if not blocks or any(_own_weight_layers(layer) for layer in module.modules()):
            blocks.append(([], []))
        blocks[-1][0].append(path)
    loose = [
        f"{prefix}{name}"
        for prefix, container in _containers(model, "")
        for name, _ in container.named_parameters(recurse=False)
    ]
    if blocks:
        blocks[0][1].extend(loose)
    return [Block(tuple(modules), tuple(parameters)) for modules, parameters in blocks]


def _candidates(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if path in STAGE_CONTAINERS:
            yield from _candidates(child, f"{path}.")
        else:
            yield path, child


def _containers(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    yield prefix, module
    for name, child in module.named_children():
        if f"{prefix}{name}" in STAGE_CONTAINERS:
            yield from _containers(child, f"{prefix}{name}.")
