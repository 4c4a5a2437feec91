"""``mtl-bench``: training throughput of the input pipelines against a plain PyTorch loop.

For each backbone, six short training runs. The first is the honest limit:

- ``plain``: a minimal pure-PyTorch loop, no Lightning and no metrics: the same backbone,
  precision, memory format, batch size and optimizer, the heads fused into stacked weights
  (the configured ``model.head_hidden`` widths, without per-task overrides or dropout), one
  uint8 batch already on the device, normalised and flipped on the device, BCE, backward, step.

The other five go through the same Lightning Trainer and the project's ``training_step``
(on-device normalise/flip, loss, metrics, logging, backward, optimizer step, precision):

- ``model_only``: one uint8 batch already on the device, served for every step (no input
  cost, but all of the module's and Lightning's per-step work: not the limit, ``plain`` is);
- ``fast``: the default pipeline, uint8 batches from the memory-mapped cache;
- ``naive``: per-image PIL decoding and torchvision transforms in the DataLoader workers;
- ``mtl`` and ``dst``: the fast pipeline with plain MTL and with the DST callback, both with
  epochs as long as one timed window, so every window holds one epoch end (where DST works).

Each run warms up, then times several windows of steps (the device synchronised at window
edges) and reports the median window's images/s. The results go to ``bench.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from tabulate import tabulate
from torch import Tensor, nn

from mtl_celeba.bench import VARIANTS
from mtl_celeba.config import CONFIG_DIR, VERSION_BASE, instantiate
from mtl_celeba.data.augment import device_transform
from mtl_celeba.data.datamodule import CelebADataModule
from mtl_celeba.errors import ConfigError
from mtl_celeba.io import write_json_atomic
from mtl_celeba.models.backbones import build_backbone, check_backbone_name
from mtl_celeba.models.optim import build_optimizer
from mtl_celeba.scheduling.callbacks import DroppedScheduledTask
from mtl_celeba.scheduling.names import BASELINE, REFERENCE

VARIANT_LABELS = {
    "plain": "plain PyTorch loop (no Lightning)",
    "model_only": "module only (batch on device)",
    "fast": "fast pipeline (uint8 cache)",
    "naive": "naive pipeline (PIL per image)",
    "mtl": "fast, plain MTL, epoch = window",
    "dst": "fast, DST, epoch = window",
}


# ------------------------------------------------------------------ measurement
def window_throughputs(times: Sequence[float], images: Sequence[int]) -> list[float]:
    """Images/s of each timed window: ``images[k]`` images between ``times[k]`` and ``times[k+1]``."""
    if len(times) != len(images) + 1:
        raise ValueError(
            f"{len(images)} windows need {len(images) + 1} edge times, got {len(times)}"
        )
    durations = [end - start for start, end in itertools.pairwise(times)]
    return [count / seconds for count, seconds in zip(images, durations, strict=True)]


#: Windows of one run differing by more than this factor mean other work shared the machine.
UNSTEADY_SPREAD = 1.15


def window_spread(throughputs: Sequence[float]) -> float:
    """Fastest over slowest window: near 1 on a machine doing nothing else."""
    return max(throughputs) / min(throughputs)


def median_throughput(times: Sequence[float], images: Sequence[int]) -> float:
    """The median of :func:`window_throughputs`: robust to a window disturbed by other work."""
    return statistics.median(window_throughputs(times, images))


class WindowTimer(Callback):
    """Records the time at the edges of the timed windows, at training batch ends.

    A window spans ``window_steps`` whole iterations (fetching the batch, moving it, the
    step itself, and any epoch-end hooks in between). ``synchronize`` waits for the device
    at each edge, so queued GPU work is counted in the window that queued it.
    """

    def __init__(
        self,
        warmup_steps: int,
        window_steps: int,
        windows: int,
        synchronize: Callable[[], None] = lambda: None,
    ) -> None:
        self.edges = {warmup_steps + k * window_steps for k in range(windows + 1)}
        self.warmup_steps = warmup_steps
        self.synchronize = synchronize
        self.steps = 0
        self.times: list[float] = []
        self.images: list[int] = []
        self.first_step_s = float("nan")
        self._fit_started = 0.0
        self._pending_images = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_started = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.steps += 1
        if self.steps == 1:
            self.synchronize()
            self.first_step_s = time.perf_counter() - self._fit_started
        if self.steps > self.warmup_steps:
            self._pending_images += len(batch[1])
        if self.steps in self.edges:
            self.synchronize()
            if self.times:
                self.images.append(self._pending_images)
            self.times.append(time.perf_counter())
            self._pending_images = 0


class SyncCounter(Callback):
    """Counts the host-device synchronisations of warm-up steps 2..``warmup_steps`` (CUDA only).

    A synchronising operation in the hot loop (``.item()``, boolean-mask indexing, a blocking
    copy) makes the host wait for the GPU every step, so data loading cannot overlap compute.
    PyTorch's sync debug mode warns at each one; the warnings' source lines say where they are.
    The span runs from the end of step 1 to the end of the warm-up, data fetching included.
    """

    def __init__(
        self, warmup_steps: int, set_mode: Callable[[str], None] = torch.cuda.set_sync_debug_mode
    ) -> None:
        self.warmup_steps = warmup_steps
        self.set_mode = set_mode
        self.steps = 0
        self.counted_steps = 0
        self.sites: dict[str, int] = {}
        self._recorder: warnings.catch_warnings | None = None
        self._records: list[warnings.WarningMessage] = []

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.steps += 1
        if self._recorder is not None and self.steps == self.warmup_steps:
            self.set_mode("default")
            self._recorder.__exit__(None, None, None)
            self._recorder = None
            self.counted_steps = self.warmup_steps - 1
            for record in self._records:
                # the timer's own torch.cuda.synchronize() at window edges is not the loop's
                if "synchroniz" in str(record.message) and record.filename != __file__:
                    site = f"{record.filename}:{record.lineno}"
                    self.sites[site] = self.sites.get(site, 0) + 1
        elif self.steps == 1 and self.warmup_steps > 1:
            self._recorder = warnings.catch_warnings(record=True)
            self._records = self._recorder.__enter__()
            warnings.simplefilter("always")
            self.set_mode("warn")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._recorder is not None:  # training ended inside the counted span
            self.set_mode("default")
            self._recorder.__exit__(None, None, None)
            self._recorder = None

    @property
    def per_step(self) -> float | None:
        """Synchronisations per training step, or None if nothing was counted."""
        return sum(self.sites.values()) / self.counted_steps if self.counted_steps else None


class RepeatedBatch:
    """``length`` references to one batch: a data source that costs nothing per step."""

    def __init__(self, batch: tuple[torch.Tensor, ...], length: int) -> None:
        self.batch = batch
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return itertools.repeat(self.batch, self.length)


class DeviceResidentData(CelebADataModule):
    """The model_only variant's data: the fast DataModule, but every training step gets the same uint8
    batch, moved to the device once. Epochs keep the real loader's length, and the on-device
    normalise/flip (``on_after_batch_transfer``) is the DataModule's own."""

    def train_dataloader(self) -> RepeatedBatch:
        steps_per_epoch = len(super().train_dataloader())
        dataset = self.datasets["train"]
        batch = dataset.__getitems__(list(range(min(self.batch_size, len(dataset)))))
        device = self.trainer.strategy.root_device
        return RepeatedBatch(tuple(tensor.to(device) for tensor in batch), steps_per_epoch)


class TimedDST(DroppedScheduledTask):
    """The DST callback, also timing its own hooks: its share of the work, free of the noise
    that comparing two separate runs carries.

    The device is synchronised around the epoch hooks, so their time is DST's own work and
    not the drain of steps still queued; the per-step hook is timed on the host only.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.setup_s = 0.0
        self.epoch_s: list[float] = []
        self.step_s: list[float] = []

    def _timed(self, pl_module: L.LightningModule, hook: Callable[..., None], *args: Any) -> float:
        cuda = pl_module.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(pl_module.device)
        started = time.perf_counter()
        hook(*args)
        if cuda:
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter() - started

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.setup_s = self._timed(pl_module, super().on_train_start, trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        hook = super().on_train_epoch_start
        self.epoch_s.append(self._timed(pl_module, hook, trainer, pl_module))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_s[-1] += self._timed(pl_module, super().on_train_epoch_end, trainer, pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        started = time.perf_counter()
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.step_s.append(time.perf_counter() - started)

    def summary_ms(self) -> dict[str, float]:
        """Milliseconds: the initial-loss pass (once), the epoch hooks (median), a step's hook."""
        return {
            "setup": 1e3 * self.setup_s,
            "per_epoch": 1e3 * statistics.median(self.epoch_s),
            "per_step": 1e3 * statistics.mean(self.step_s),
        }


# ------------------------------------------------------------------- settings
@dataclass
class Settings:
    """Everything that determines a benchmark run (written to bench.json)."""

    accelerator: str
    backbones: list[str]
    image_size: int
    batch_size: int
    precision: str
    compile: bool
    workers: int
    num_images: int
    data_source: str
    data_root: str | None
    windows: int
    window_steps: int
    warmup_steps: int
    overrides: list[str] = field(default_factory=list)
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    #: ``--strategies``: methods timed on the fast pipeline beside plain MTL.
    strategies: list[str] = field(default_factory=list)

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.windows * self.window_steps


def resolve_settings(args: argparse.Namespace, cuda: bool) -> Settings:
    """Fill the device-dependent defaults and check every value."""
    cores = os.cpu_count() or 1

    def pick(value: Any, cpu: Any, gpu: Any) -> Any:
        return value if value is not None else (gpu if cuda else cpu)

    backbones = pick(args.backbones, "resnet18", "resnet18,vgg16")
    settings = Settings(
        accelerator="gpu" if cuda else "cpu",
        backbones=[name.strip() for name in backbones.split(",") if name.strip()],
        image_size=pick(args.image_size, 64, 128),
        batch_size=pick(args.batch_size, 64, 256),
        precision=pick(args.precision, "32-true", "bf16-mixed"),
        compile=args.compile,
        # CPU: 0, as mtl-train's synthetic default (a worker only takes a core from the model)
        workers=pick(args.workers, 0, min(8, cores)),
        num_images=pick(args.num_images, 3000, 30_000),
        data_source=args.data_source,
        data_root=args.data_root,
        windows=pick(args.windows, 5, 5),
        window_steps=pick(args.window_steps, 5, 30),
        warmup_steps=pick(args.warmup_steps, 2, 30),
        overrides=list(args.overrides),
        variants=[name.strip() for name in args.variants.split(",") if name.strip()],
        strategies=_strategy_list(args.strategies),
    )
    unknown = [name for name in settings.variants if name not in VARIANTS]
    if unknown or not settings.variants:
        raise ConfigError(
            f"--variants {args.variants!r}: choose from {', '.join(VARIANTS)}, comma-separated."
        )
    known = sorted(path.stem for path in (CONFIG_DIR / "strategy").glob("*.yaml"))
    bad = [name for name in settings.strategies if name not in known or name == REFERENCE]
    if bad:
        raise ConfigError(
            f"--strategies names {', '.join(bad)}: choose from "
            f"{', '.join(k for k in known if k != 'stl')}, comma-separated."
        )
    if not settings.backbones:
        raise ConfigError("--backbones is empty: name at least one, e.g. --backbones resnet18.")
    for option, value, least in (
        ("--batch-size", settings.batch_size, 1),
        ("--workers", settings.workers, 0),
        ("--windows", settings.windows, 1),
        ("--window-steps", settings.window_steps, 1),
        ("--warmup-steps", settings.warmup_steps, 1),
    ):
        if value < least:
            raise ConfigError(f"{option} is {value}: use {least} or more.")
    if settings.precision not in PLAIN_PRECISIONS:
        raise ConfigError(
            f"--precision is {settings.precision!r}: the plain loop supports "
            f"{', '.join(PLAIN_PRECISIONS)}."
        )
    if settings.data_source == "celeba" and not settings.data_root:
        raise ConfigError(
            "--data-source celeba needs --data-root: pass the folder that holds your CelebA copy."
        )
    return settings


def _strategy_list(text: str) -> list[str]:
    """``--strategies`` as a list, plain MTL first (every method is timed relative to it)."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    return [BASELINE, *(name for name in names if name != BASELINE)] if names else []


# ------------------------------------------------------------- configuration
def model_overrides(backbone: str) -> list[str]:
    """``model=NAME`` when conf/model has that config, else a torchvision name on the default."""
    if (CONFIG_DIR / "model" / f"{backbone}.yaml").exists():
        return [f"model={backbone}"]
    return [f"model.backbone={backbone}"]


def compose_run(
    settings: Settings,
    backbone: str,
    variant: str,
    strategy: str | None = None,
    gradients: str | None = None,
) -> DictConfig:
    """The ``conf/train.yaml`` composition of one run: what ``mtl-train`` would train.

    ``strategy`` (with the ``mtl`` variant) times that strategy on the fast pipeline instead,
    ``gradients`` sets its ``strategy.gradients``.
    """
    if strategy is None:
        strategy = "dst" if variant == "dst" else BASELINE
    overrides = [
        *model_overrides(backbone),
        *(["data=celeba"] if settings.data_source == "celeba" else []),
        *([f"data.root='{Path(settings.data_root).resolve()}'"] if settings.data_root else []),
        f"data.num_images={settings.num_images}",
        f"data.image_size={settings.image_size}",
        f"data.batch_size={settings.batch_size}",
        f"data.num_workers={settings.workers}",
        f"data.pipeline={'naive' if variant == 'naive' else 'cached'}",
        # the project's own trainer config (conf/trainer/cpu.yaml or gpu.yaml), as mtl-train's
        f"trainer={'gpu' if settings.accelerator == 'gpu' else 'cpu'}",
        f"trainer.precision={settings.precision}",
        f"model.compile={str(settings.compile).lower()}",
        f"strategy={strategy}",
        *([f"strategy.gradients={gradients}"] if gradients else []),
        *(["strategy.gate_every=epoch"] if variant == "dst" else []),
        *settings.overrides,
        # the naive pipeline decodes JPEGs: a device cache (data.device_cache=true) is for the rest
        *(["data.device_cache=false"] if variant == "naive" else []),
    ]
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=VERSION_BASE):
            return compose("train", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(
            f"cannot compose conf/train.yaml with {' '.join(overrides)} ({error}); "
            "check --backbones and the extra overrides."
        ) from None


# -------------------------------------------------------------------- running
@dataclass
class RunResult:
    """One run's measurement."""

    images_per_s: float
    window_images_per_s: list[float]
    first_step_s: float
    #: Host-device synchronisations per step and where they happen (CUDA, fast variant only).
    syncs_per_step: float | None = None
    sync_sites: dict[str, int] = field(default_factory=dict)
    #: The DST callback's own hook times (dst variant only), see :class:`TimedDST`.
    dst_callback_ms: dict[str, float] | None = None


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's per-fit info lines and the warnings that short benchmark runs trigger."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        # epochs of a few steps may miss a rare attribute's positives: metrics, not speed
        warnings.filterwarnings("ignore", message=r".*No positive samples in targets.*")
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def run_variant(
    cfg: DictConfig, settings: Settings, variant: str, with_strategy: bool = False
) -> RunResult:
    """Train ``settings.total_steps`` steps of one variant and time its windows.

    ``with_strategy`` adds the config's strategy callback (``--strategies`` runs, on the
    ``mtl`` variant's settings: fast pipeline, an epoch end in every window).
    """
    cuda = settings.accelerator == "gpu"
    L.seed_everything(int(cfg.seed), verbose=False)
    if variant == "model_only":
        datamodule = instantiate(cfg.data, _target_=f"{__name__}.DeviceResidentData")
    else:
        datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    timer = WindowTimer(
        settings.warmup_steps,
        settings.window_steps,
        settings.windows,
        torch.cuda.synchronize if cuda else lambda: None,
    )
    callbacks: list[Callback] = [timer]
    syncs = SyncCounter(settings.warmup_steps) if cuda and variant == "fast" else None
    if syncs is not None:
        callbacks.append(syncs)
    dst = None
    if variant == "dst":
        dst = instantiate(cfg.strategy.callback, _target_=f"{__name__}.TimedDST")
        callbacks.append(dst)
    elif with_strategy:
        callbacks.append(instantiate(cfg.strategy.callback))
    with tempfile.TemporaryDirectory(prefix="mtl-bench-") as run_dir:
        # conf/trainer's Trainer, with what a timed run changes: a step budget instead of epochs,
        # no validation, checkpoints, logging or progress bar
        trainer = instantiate(
            cfg.trainer,
            devices=1,
            max_steps=settings.total_steps,
            max_epochs=-1,
            # one epoch end in every window, where the scheduling callback does its work
            limit_train_batches=settings.window_steps if variant in ("mtl", "dst") else None,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=run_dir,
            callbacks=callbacks,
        )
        trainer.fit(model, datamodule=datamodule)
    del trainer, model, datamodule
    gc.collect()  # ends the persistent DataLoader workers before the next run starts its own
    if cuda:
        torch.cuda.empty_cache()
    if len(timer.times) != settings.windows + 1:
        raise RuntimeError(f"{variant}: training stopped after {timer.steps} steps")
    windows = window_throughputs(timer.times, timer.images)
    result = RunResult(statistics.median(windows), windows, timer.first_step_s)
    if syncs is not None:
        result.syncs_per_step, result.sync_sites = syncs.per_step, syncs.sites
    if dst is not None:
        result.dst_callback_ms = dst.summary_ms()
    return result


#: Lightning precisions the plain loop reproduces, and the autocast dtype of each.
PLAIN_PRECISIONS = {
    "32-true": None,
    "32": None,
    "bf16-mixed": torch.bfloat16,
    "bf16": torch.bfloat16,
    "16-mixed": torch.float16,
    "16": torch.float16,
}


class PlainHeads(nn.Module):
    """Every task's MLP head as stacked weights: ``Linear(F, T * H)`` then per-task layers.

    Written here rather than taken from :mod:`mtl_celeba.models.heads` so the plain loop stays
    an independent reference. ``hidden=[]`` is one ``Linear(F, T)``.
    """

    def __init__(self, in_features: int, num_tasks: int, hidden: Sequence[int]) -> None:
        super().__init__()
        widths = [*hidden, 1]
        self.first = nn.Linear(in_features, num_tasks * widths[0])
        self.num_tasks = num_tasks
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(num_tasks, out, width) / width**0.5)
            for width, out in itertools.pairwise(widths)
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.zeros(num_tasks, out)) for out in widths[1:]
        )

    def forward(self, features: Tensor) -> Tensor:
        out = self.first(features).view(len(features), self.num_tasks, -1)
        for weight, bias in zip(self.weights, self.biases, strict=True):
            out = torch.einsum("bgi,goi->bgo", F.relu(out), weight) + bias
        return out.squeeze(-1)


def run_plain(cfg: DictConfig, settings: Settings) -> RunResult:
    """A minimal pure-PyTorch training loop: the speed the project's step should approach.

    Same backbone (and freezing), memory format, compile flag, precision, batch size and
    optimizer as the other runs; no Lightning, no metrics, no logging, no missing-label mask.
    One uint8 batch lives on the device and is normalised and flipped there every step.
    """
    cuda = settings.accelerator == "gpu"
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.set_float32_matmul_precision("high")
    L.seed_everything(int(cfg.seed), verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    dataset = datamodule.datasets["train"]
    indices = list(range(min(settings.batch_size, len(dataset))))
    images, targets, _ = (t.to(device) for t in dataset.__getitems__(indices))
    channels_last = bool(cfg.model.channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    backbone = build_backbone(
        cfg.model.backbone, weights=cfg.model.weights, freeze=cfg.model.freeze
    )
    heads = PlainHeads(backbone.out_features, targets.shape[1], list(cfg.model.head_hidden))
    backbone.to(device=device, memory_format=memory_format)
    heads.to(device)
    if settings.compile:
        backbone.compile()
    backbone.train(), heads.train()
    params = [p for m in (backbone, heads) for p in m.parameters() if p.requires_grad]
    optimizer = build_optimizer(instantiate(cfg.model.optimizer), params, cuda)
    dtype = PLAIN_PRECISIONS[settings.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    timer = WindowTimer(
        settings.warmup_steps,
        settings.window_steps,
        settings.windows,
        torch.cuda.synchronize if cuda else lambda: None,
    )
    timer.on_fit_start(None, None)
    batch = (images, targets)
    for step in range(settings.total_steps):
        x = device_transform(images, train=True, flip=bool(cfg.data.flip))
        x = x.contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = heads(backbone(x))
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        timer.on_train_batch_end(None, None, None, batch, step)  # type: ignore[arg-type]
    del backbone, heads, optimizer, datamodule
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    windows = window_throughputs(timer.times, timer.images)
    return RunResult(statistics.median(windows), windows, timer.first_step_s)


#: Each ratio: (numerator, denominator) variants; with --variants only those measured are given.
RATIOS = {
    "fast_over_plain": ("fast", "plain"),
    "fast_over_model_only": ("fast", "model_only"),
    "fast_over_naive": ("fast", "naive"),
    # step time is batch / throughput, so (t_dst - t_mtl) / t_mtl = mtl/dst - 1
    "dst_overhead": ("mtl", "dst"),
}


def ratios(throughput: dict[str, float]) -> dict[str, float]:
    """fast/plain, fast/model_only, fast/naive, and DST's share of step time over plain MTL,
    each where both of its variants were measured."""
    result = {}
    for name, (top, bottom) in RATIOS.items():
        if top in throughput and bottom in throughput:
            value = throughput[top] / throughput[bottom]
            result[name] = value - 1.0 if name == "dst_overhead" else value
    return result


def plan_runs(settings: Settings) -> dict[str, dict[str, DictConfig]]:
    """The composed config of every (backbone, variant), with each backbone name checked."""
    plan: dict[str, dict[str, DictConfig]] = {}
    for backbone in settings.backbones:
        plan[backbone] = {
            variant: compose_run(settings, backbone, variant) for variant in settings.variants
        }
        for strategy in settings.strategies:
            plan[backbone][f"strategy:{strategy}"] = cfg = compose_run(
                settings, backbone, "mtl", strategy
            )
            if "gradients" in cfg.strategy:  # a gradient method: also on the parameters'
                both = compose_run(settings, backbone, "mtl", strategy, "parameters")
                plan[backbone][f"strategy:{strategy}:parameters"] = both
        try:
            check_backbone_name(plan[backbone][settings.variants[0]].model.backbone)
        except ConfigError as error:
            raise ConfigError(f"--backbones names {backbone}: {error}") from None
    return plan


def benchmark_backbone(
    settings: Settings, backbone: str, configs: dict[str, DictConfig]
) -> dict[str, Any]:
    """All variants of one backbone; prints one line per variant as it completes."""
    runs: dict[str, RunResult] = {}
    for variant in settings.variants:
        started = time.perf_counter()
        with quiet_lightning():
            if variant == "plain":
                run = runs[variant] = run_plain(configs[variant], settings)
            else:
                run = runs[variant] = run_variant(configs[variant], settings, variant)
        windows = ", ".join(f"{value:.1f}" for value in run.window_images_per_s)
        spread = window_spread(run.window_images_per_s)
        unsteady = f"  UNSTEADY: windows differ {spread:.2f}x" if spread > UNSTEADY_SPREAD else ""
        print(
            f"  {backbone:<10} {VARIANT_LABELS[variant]:<32} {run.images_per_s:9.1f} images/s "
            f"(windows {windows}; first step {run.first_step_s:.1f} s; "
            f"run {time.perf_counter() - started:.0f} s){unsteady}",
            flush=True,
        )
        if run.syncs_per_step is not None:
            sites = "".join(f"\n      {site} ({count}x)" for site, count in run.sync_sites.items())
            print(f"    {run.syncs_per_step:.1f} host-device syncs per step{sites}")
        if run.dst_callback_ms:
            hooks = run.dst_callback_ms
            print(
                f"    DST's own hooks: {hooks['per_epoch']:.2f} ms per epoch, "
                f"{hooks['per_step']:.4f} ms per step, {hooks['setup']:.0f} ms once "
                "(initial-loss pass)"
            )
    throughput = {variant: run.images_per_s for variant, run in runs.items()}
    strategies = benchmark_strategies(settings, backbone, configs)
    return {
        "model": str(next(iter(configs.values())).model.backbone),
        "images_per_s": throughput,
        "window_images_per_s": {v: r.window_images_per_s for v, r in runs.items()},
        "window_spread": {v: window_spread(r.window_images_per_s) for v, r in runs.items()},
        "first_step_s": {v: r.first_step_s for v, r in runs.items()},
        **ratios(throughput),
        "dst_callback_ms": runs["dst"].dst_callback_ms if "dst" in runs else None,
        "fast_syncs_per_step": runs["fast"].syncs_per_step if "fast" in runs else None,
        "fast_sync_sites": runs["fast"].sync_sites if "fast" in runs else {},
        **({"strategies": strategies} if strategies else {}),
    }


def benchmark_strategies(
    settings: Settings, backbone: str, configs: dict[str, DictConfig]
) -> dict[str, dict[str, float]]:
    """``--strategies``: each method's throughput and step time relative to plain MTL's, all
    on the fast pipeline with an epoch end in every window (where per-epoch methods work)."""
    measured: dict[str, RunResult] = {}
    gradients: dict[str, str | None] = {}
    for key, cfg in configs.items():
        if not key.startswith("strategy:"):
            continue
        name = key.removeprefix("strategy:")  # NAME, or NAME:parameters
        with quiet_lightning():
            run = run_variant(cfg, settings, "mtl", with_strategy=True)
        measured[name] = run
        gradients[name] = cfg.strategy.get("gradients")
        spread = window_spread(run.window_images_per_s)
        unsteady = f"  UNSTEADY: windows differ {spread:.2f}x" if spread > UNSTEADY_SPREAD else ""
        print(
            f"  {backbone:<10} {'strategy ' + name:<32} {run.images_per_s:9.1f} images/s{unsteady}",
            flush=True,
        )
    if not measured:
        return {}
    mtl = measured["mtl"].images_per_s
    return {
        name: {
            "strategy": name.split(":")[0],
            "gradients": gradients[name],
            "images_per_s": run.images_per_s,
            "window_spread": window_spread(run.window_images_per_s),
            # step time is batch / throughput: t_method / t_mtl = mtl / method
            "step_time_vs_mtl": mtl / run.images_per_s,
        }
        for name, run in measured.items()
    }


def strategies_table(backbones: dict[str, dict[str, Any]]) -> str:
    """One row per (backbone, strategy, gradient kind): images/s and step time relative to
    plain MTL ("-": a method without per-task gradients)."""
    rows = [
        [
            name,
            entry["strategy"],
            entry["gradients"] or "-",
            f"{entry['images_per_s']:.1f}",
            f"{entry['step_time_vs_mtl']:.2f}x",
        ]
        for name, result in backbones.items()
        for entry in result.get("strategies", {}).values()
    ]
    headers = ["backbone", "strategy", "gradients", "images/s", "step time vs MTL"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


# ------------------------------------------------------------------ reporting
def device_name(cuda: bool) -> str:
    """The GPU's name, or the CPU model with its core count."""
    if cuda:
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def _ratio_cell(entry: dict[str, Any], name: str) -> str:
    if name not in entry:
        return "-"
    return f"{100 * entry[name]:+.2f}%" if name == "dst_overhead" else f"{entry[name]:.2f}"


def results_table(backbones: dict[str, dict[str, Any]]) -> str:
    """Images/s per measured variant and the four ratios ("-" if not measured), one row per backbone."""
    variants = [v for v in VARIANTS if any(v in e["images_per_s"] for e in backbones.values())]
    rows = [
        [
            name,
            *(
                f"{entry['images_per_s'][v]:.1f}" if v in entry["images_per_s"] else "-"
                for v in variants
            ),
            *(_ratio_cell(entry, ratio) for ratio in RATIOS),
        ]
        for name, entry in backbones.items()
    ]
    headers = [
        "backbone",
        *variants,
        "fast/plain",
        "fast/model_only",
        "fast/naive",
        "DST overhead",
    ]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def load_average() -> float | None:
    """The machine's 1-minute load average (other processes slow a shared CPU down)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def report(
    settings: Settings, device: str, load: dict[str, float | None], backbones: dict[str, Any]
) -> dict[str, Any]:
    """The bench.json document."""
    import lightning
    import torchvision

    return {
        "device": device,
        "accelerator": settings.accelerator,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "lightning": lightning.__version__,
        },
        "load_average": load,
        "settings": {
            **asdict(settings),
            "torch_threads": torch.get_num_threads(),
            "dst_epoch_steps": settings.window_steps,
        },
        "backbones": backbones,
    }


def print_header(settings: Settings, device: str, load: float | None) -> None:
    print(f"mtl-bench on {settings.accelerator.upper()}: {device}")
    print(
        f"  torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{settings.image_size}px, batch {settings.batch_size}, {settings.precision}"
        f"{', compiled' if settings.compile else ''}; {settings.workers} DataLoader workers; "
        f"{settings.data_source} data; {settings.warmup_steps} warm-up steps, then the median "
        f"of {settings.windows} windows of {settings.window_steps} steps"
    )
    cores = os.cpu_count() or 1
    if settings.accelerator == "cpu" and load is not None and load > 0.5 * cores:
        print(
            f"  note: load average {load:.1f} on {cores} cores: other processes share the CPU, "
            "so throughputs are lower and noisier than on an idle machine"
        )


def run(args: argparse.Namespace) -> None:
    """``mtl-bench`` (parsed by :mod:`mtl_celeba.bench.__main__`): measure every variant,
    print the table and the ratios, write bench.json."""
    cuda = torch.cuda.is_available()
    settings = resolve_settings(args, cuda)
    plan = plan_runs(settings)
    if cuda:
        torch.backends.cudnn.benchmark = True
    device = device_name(cuda)
    load = {"start": load_average(), "end": None}
    print_header(settings, device, load["start"])
    results: dict[str, dict[str, Any]] = {}
    for backbone, configs in plan.items():
        results[backbone] = benchmark_backbone(settings, backbone, configs)
        load["end"] = load_average()
        # after each backbone, so a run cut short still leaves the finished ones
        write_json_atomic(args.out, report(settings, device, load, results))
    print()
    print(results_table(results))
    if settings.strategies:
        print()
        print(strategies_table(results))
    print(
        "\nimages/s: median over the timed windows. fast/plain: the share of a plain PyTorch "
        "loop's speed (same network, no Lightning, no metrics) that the fast pipeline reaches. "
        "fast/model_only: the share of the module's own speed on a device-resident batch. "
        "fast/naive: its speed-up over per-image "
        "decoding. DST overhead: DST's extra step time over plain MTL, with an epoch end "
        f"(DST's update) every {settings.window_steps} steps: an upper bound for longer epochs."
    )
    if any(
        spread > UNSTEADY_SPREAD
        for entry in results.values()
        for spread in entry["window_spread"].values()
    ):
        print(
            f"UNSTEADY runs: their windows differ by more than {UNSTEADY_SPREAD:.2f}x: other "
            "work shared the machine, or the machine itself is noisy (a small virtual machine's "
            "windows can differ by 1.2-1.35x when idle). Run it again and compare the ratios."
        )
    print(f"Results: {args.out}")
