"""experiment=transfer: the grid composes, each variant trains a few steps from a local
state_dict (offline), and mtl-report tells the variants apart."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
from hydra_plugins.mtl_celeba_launcher.grids import GridUnionSweeper

from mtl_celeba.report.runs import transfer_label
from mtl_celeba.run.results import RunConfig

VARIANTS = {
    "model.weights=null": "scratch",
    "model.freeze=all": "linear probe",
    "model.freeze=2": "last 2 blocks",
    "model.freeze=null": "full fine-tune",
    "callbacks=finetune": "two-stage",
}


def transfer_jobs(compose_train, pretrained: str) -> list[list[str]]:
    cfg = compose_train(["experiment=transfer", f"pretrained={pretrained}"])
    return GridUnionSweeper(grids=cfg.hydra.sweeper.grids).jobs([])


def test_grid_composes_every_variant(compose_train, tmp_path: Path) -> None:
    weights = str(tmp_path / "resnet18.pth")
    jobs = transfer_jobs(compose_train, weights)
    assert [job[0] for job in jobs] == list(VARIANTS)
    for job in jobs:
        cfg = compose_train(["experiment=transfer", f"pretrained={weights}", *job])
        assert cfg.strategy.name == "mtl" and cfg.task_name == "transfer"
        scratch = job == ["model.weights=null"]
        assert cfg.model.weights == (None if scratch else weights)
        two_stage = job == ["callbacks=finetune"]
        assert ("backbone_finetuning" in cfg.callbacks) == two_stage
        assert "model_checkpoint" in cfg.callbacks  # the best checkpoint by validation, always
    cfg = compose_train(["callbacks=finetune"])
    assert cfg.callbacks.backbone_finetuning.backbone_initial_ratio_lr < 1


def test_transfer_labels() -> None:
    assert transfer_label(RunConfig.from_dict({"weights": None, "freeze": None})) == "-"
    assert (
        transfer_label(RunConfig.from_dict({"weights": "/m/r18.pth", "freeze": "all"}))
        == "linear probe from r18.pth"
    )
    assert (
        transfer_label(RunConfig.from_dict({"weights": "DEFAULT", "freeze": 2}))
        == "last 2 blocks from DEFAULT"
    )
    assert (
        transfer_label(RunConfig.from_dict({"weights": "DEFAULT", "freeze": None}))
        == "full fine-tune from DEFAULT"
    )
    assert (
        transfer_label(RunConfig.from_dict({"weights": "DEFAULT", "freeze": None, "finetune": 1}))
        == "two-stage (backbone from epoch 2) from DEFAULT"  # unfreeze_backbone_at_epoch=1
    )


@pytest.mark.slow
def test_each_variant_trains_and_the_report_compares_them(compose_train, tmp_path: Path) -> None:
    from mtl_celeba.report.__main__ import main as report
    from mtl_celeba.train import train

    torch.manual_seed(123)
    pretrained = torchvision.models.resnet18(weights=None).state_dict()
    weights = tmp_path / "resnet18.pth"
    torch.save(pretrained, weights)
    fast = [
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
    ]
    sweep = tmp_path / "sweep"
    for number, job in enumerate(transfer_jobs(compose_train, str(weights))):
        overrides = [
            "experiment=transfer",
            f"pretrained={weights}",
            *job,
            *fast,
        ]
        if job == ["callbacks=finetune"]:  # unfreeze at the second epoch
            overrides += [
                "trainer.max_epochs=2",
                "callbacks.backbone_finetuning.unfreeze_backbone_at_epoch=1",
                "model.scheduler=null",  # so the LRs in last.ckpt are the callback's alone
            ]
        else:  # the same epochs as the two-stage run: the report pairs equal scales only
            overrides += ["trainer.max_epochs=2"]
        run_dir = sweep / str(number)
        results = train(compose_train(overrides, run_dir=run_dir), run_dir)
        assert results["status"] == "completed", job
        final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]

        def moved(name: str, final=final) -> bool:
            return not torch.equal(final[f"backbone.model.{name}"], pretrained[name])

        variant = VARIANTS[job[0]]
        if variant == "linear probe":
            assert not moved("conv1.weight") and not moved("layer4.1.conv2.weight")
        elif variant == "last 2 blocks":
            assert not moved("conv1.weight") and moved("layer4.1.conv2.weight")
        elif variant in ("full fine-tune", "two-stage"):
            assert moved("conv1.weight") and moved("layer4.1.conv2.weight")
        if variant == "two-stage":
            assert results["config"]["finetune"] == 1
            # the backbone joined the optimiser at epoch 1 as a second group, at 0.1 x the heads' LR
            state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
            heads, backbone = state["optimizer_states"][0]["param_groups"]
            assert heads["lr"] == pytest.approx(1e-3)  # no LR schedule in this run
            assert backbone["lr"] == pytest.approx(0.1 * heads["lr"])

    report([str(sweep)])
    table = pd.read_csv(sweep / "report.csv")
    assert len(table) == 5 and table["runs"].eq(1).all()
    assert set(table["transfer"]) == {
        "-",
        "linear probe from resnet18.pth",
        "last 2 blocks from resnet18.pth",
        "full fine-tune from resnet18.pth",
        "two-stage (backbone from epoch 2) from resnet18.pth",
    }
    assert table["mean_over_tasks_gain_mtl"].notna().all()  # each against scratch
