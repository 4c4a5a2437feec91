"""Shared fixtures: a tiny synthetic CelebA and Hydra configs composed for fast runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from mtl_celeba.config import CONFIG_DIR

TINY_IMAGES = 400


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 400-image synthetic CelebA (torchvision layout), generated once per test session."""
    from mtl_celeba.data.synthetic import generate_synthetic_celeba

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_celeba(root, num_images=TINY_IMAGES, seed=0, progress=False)
    return root


#: Overrides that make a training run take seconds on a CPU.
FAST_OVERRIDES = (
    "data.image_size=32",
    "data.batch_size=64",
    "data.eval_batch_size=128",
    "data.cache_workers=1",
    "trainer.max_epochs=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "model.head_hidden=[16]",
)


def compose_run(overrides: Sequence[str], run_dir: Path, config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` for a run in ``run_dir``, the Hydra
    config installed as if by ``@hydra.main`` so ``${hydra:...}`` resolves."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def compose_config() -> Callable[..., DictConfig]:
    """:func:`compose_run` as a fixture: Hydra's global state is cleared afterwards."""
    yield compose_run
    GlobalHydra.instance().clear()


@pytest.fixture
def compose_train(synthetic_root: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/train.yaml`` for a fast run on the tiny synthetic data, writing into tmp_path.

    The Hydra config is installed as if by ``@hydra.main`` so ``${hydra:...}`` resolves.
    """

    def _compose(
        overrides: Sequence[str] = (), run_dir: Path | None = None, config_name: str = "train"
    ) -> DictConfig:
        tiny = [
            f"data.root={synthetic_root}",
            f"data.num_images={TINY_IMAGES}",
            f"data.cache_dir={tmp_path / 'cache'}",
            *FAST_OVERRIDES,
        ]
        return compose_run(
            [*(tiny if config_name == "train" else []), *overrides],
            run_dir or tmp_path / "run",
            config_name,
        )

    yield _compose
    GlobalHydra.instance().clear()
