"""Bad inputs end with one line naming the key or file and the fix (exit 2), and fail fast.

Issue 13 item 8: each case a new user tried that ended in a traceback (or, for
``trainer.max_epochs=0``, in a "completed" run that trained nothing).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mtl_celeba.cli.hydra_app import preflight
from mtl_celeba.cli.validate import validate_eval_config, validate_train_config
from mtl_celeba.config import PROJECT_ROOT
from mtl_celeba.errors import ConfigError
from mtl_celeba.run.resume import check_checkpoint


def train_error(*overrides: str) -> str:
    """The one-line error of ``mtl-train OVERRIDES`` found before Hydra runs the job."""
    with pytest.raises(ConfigError) as caught:
        preflight("train", list(overrides), validate_train_config)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.image_size=abc"], "data.image_size is 'abc': use an integer >= 16"),
        (["data.image_size=8"], "data.image_size is 8"),
        (["data.image_size=32.5"], "data.image_size is 32.5"),
        (["data.batch_size=0"], "data.batch_size is 0: use an integer >= 1"),
        (["data.batch_size=true"], "data.batch_size is True"),
        (["data.eval_batch_size=0"], "data.eval_batch_size is 0"),
        (["data.num_workers=-1"], "data.num_workers is -1: use null (fit the machine) or an"),
        (["data.cache_workers=0"], "data.cache_workers is 0"),
        (["seed=-1"], "seed is -1: use an integer in [0, 2**32)"),
        ([f"seed={2**32}"], f"seed is {2**32}"),
        (["trainer.max_epochs=0"], "trainer.max_epochs is 0: use an integer >= 1"),
        (["trainer.min_epochs=5", "trainer.max_epochs=2"], "trainer.min_epochs (5) is above"),
        (["model.optimizer.lr=0"], "model.optimizer.lr is 0: use a number > 0"),
        (["model.head_dropout=1.5"], "model.head_dropout is 1.5"),
        (["resume=yes"], "resume is 'yes': use auto or null"),
        (["trainer.devices=abc"], "trainer.devices is 'abc': use auto, -1 (all), a count"),
        (["trainer.devices=0"], "trainer.devices is 0"),
        (["trainer.devices=[]"], "trainer.devices is []"),
        (["trainer.accelerator=gpux"], "trainer.accelerator is 'gpux': use one of auto, cpu"),
    ],
)
def test_bad_values_fail_before_the_run(overrides, expected):
    assert expected in train_error(*overrides)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["data.imagesize=32"],
            "data.imagesize is not a config key. Did you mean data.image_size?",
        ),
        (["trainer.max_epoch=3"], "Did you mean trainer.max_epochs?"),
        (["modle=vgg16"], "modle is not a config key. Did you mean model?"),
        (
            ["model=resnet19"],
            "model=resnet19: no such option in the model group. Did you mean resnet18?",
        ),
        (["experiment=dst_vs_baseline"], "Did you mean dst_vs_baselines?"),
        (["debug=fats"], "debug=fats: no such option"),
        (["hydra/launcher=gpupool"], "Did you mean gpu_pool?"),
        (
            ["-m", "model=resnet18,resnet19"],
            "model=resnet19: no such option in the model group. Did you mean resnet18?",
        ),
        (["-m", "experiment=stl,dst_vs_baseline"], "Did you mean dst_vs_baselines?"),
        (
            ["-m", "data.imagesiz=32,64"],
            "data.imagesiz is not a config key. Did you mean data.image_size?",
        ),
        (["data.attributes=[Male"], "cannot parse the command line: no viable alternative"),
        (["hydra.job.chdir=abc"], "hydra.job.chdir=abc Value 'abc' is not a valid bool"),
    ],
)
def test_unknown_keys_and_options_say_did_you_mean(overrides, expected):
    assert expected in train_error(*overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["-m", "seed=0,1", "model=resnet18,vgg16"],
        ["experiment=dst_vs_baselines"],
        ["data=celeba", "data.root={celeba}", "data.image_size=64"],
        ["debug=fast", "trainer=cpu", "data.attributes=[Male,Smiling]"],
        ["data.label_noise=celeba"],
        ["trainer=gpu", "trainer.devices=[0,1]"],
        ["trainer.devices=auto", "trainer.accelerator=cuda"],
        ["trainer=ddp", "trainer.devices='0,1'"],
    ],
)
def test_valid_command_lines_pass(overrides, monkeypatch, tmp_path):
    import torch

    # the preflight reads a real CelebA's header and partition file: give it a small copy
    from mtl_celeba.data.attributes import CELEBA_ATTRIBUTES

    write_celeba_files(tmp_path, dict.fromkeys(CELEBA_ATTRIBUTES, [1, -1] * 4), PARTITION)
    overrides = [override.format(celeba=tmp_path) for override in overrides]

    # the GPU command lines are valid where a GPU is visible (without one: test_gpu_* below)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert preflight("train", overrides, validate_train_config) == []


def test_mtl_eval_without_ckpt_path_and_with_a_bad_split():
    with pytest.raises(ConfigError, match="mtl-eval needs a checkpoint: pass ckpt_path="):
        preflight("eval", [], validate_eval_config)
    with pytest.raises(ConfigError, match="split is 'train': use val or test"):
        preflight("eval", ["ckpt_path=x.ckpt", "split=train"], validate_eval_config)
    with pytest.raises(ConfigError, match=r"trainer\.devices is 'abc': use auto, -1"):
        preflight("eval", ["ckpt_path=x.ckpt", "trainer.devices=abc"], validate_eval_config)


# ---------------------------------------------------------------- checkpoints


def fake_checkpoint(path: Path, tasks=("Male", "Smiling"), epoch: int = 1) -> Path:
    """A file shaped like mtl-train's checkpoints (what the checks read), saved by torch."""
    torch.save(
        {
            "epoch": epoch,
            "state_dict": {"heads.Male.weight": torch.zeros(2, 2)},
            "hyper_parameters": {"tasks": list(tasks), "backbone": "resnet18"},
        },
        path,
    )
    return path


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p, "does not exist"),
        (lambda p: (p.mkdir(), p)[1], "is a folder"),
        (lambda p: (p.write_bytes(b""), p)[1], "is not a readable checkpoint"),
        (lambda p: (p.write_bytes(bytes(range(256)) * 64), p)[1], "is not a readable checkpoint"),
        (
            lambda p: (p.write_bytes(fake_checkpoint(p).read_bytes()[:300]), p)[1],
            "is not a readable checkpoint (truncated",
        ),
        (lambda p: (torch.save(torch.ones(3), p), p)[1], "is a PyTorch file but not a checkpoint"),
    ],
    ids=["missing", "folder", "empty", "random", "truncated", "tensor"],
)
def test_unreadable_checkpoints_are_one_line(tmp_path, make, expected):
    path = make(tmp_path / "epoch001.ckpt")
    with pytest.raises(ConfigError) as caught:
        check_checkpoint(path, ["Male", "Smiling"])
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert str(path) in str(caught.value)


def test_checkpoint_of_other_tasks_or_backbone(tmp_path):
    path = fake_checkpoint(tmp_path / "last.ckpt")
    assert check_checkpoint(path, ["Male", "Smiling"], "resnet18")["epochs_done"] == 2
    with pytest.raises(
        ConfigError,
        match=r"trained on tasks \['Male', 'Smiling'\] but the config asks for \['Male', 'Young'\]",
    ):
        check_checkpoint(path, ["Male", "Young"])
    with pytest.raises(
        ConfigError, match=r"holds a resnet18 but the config asks for model\.backbone=vgg16"
    ):
        check_checkpoint(path, ["Male", "Smiling"], "vgg16")


# ---------------------------------------------------------------- through train() and evaluate()


def test_train_records_config_and_checkpoint_errors(compose_train, tmp_path):
    from mtl_celeba.run.resume import read_status
    from mtl_celeba.train import train

    cases = {
        "abc": (["data.image_size=abc"], "data.image_size is 'abc'"),
        "epochs": (["trainer.max_epochs=0"], "trainer.max_epochs is 0"),
        "missing": ([f"ckpt_path={tmp_path / 'nope.ckpt'}"], "does not exist"),
        "tasks": (
            [
                "data.attributes=[Male,Young]",
                f"ckpt_path={fake_checkpoint(tmp_path / 'other.ckpt')}",
            ],
            "was trained on tasks ['Male', 'Smiling'] but the config asks for ['Male', 'Young']",
        ),
        "done": (
            [
                "data.attributes=[Male,Smiling]",
                "trainer.max_epochs=2",
                f"ckpt_path={fake_checkpoint(tmp_path / 'done.ckpt', epoch=1)}",
            ],
            "has already trained 2 epochs and trainer.max_epochs is 2",
        ),
    }
    for name, (overrides, expected) in cases.items():
        run_dir = tmp_path / name
        with pytest.raises(ConfigError) as caught:
            train(compose_train(overrides, run_dir=run_dir), run_dir)
        assert expected in str(caught.value), name
        status = read_status(run_dir)
        assert status["status"] == "failed" and expected in status["error"], name


def write_run_folder(run_dir: Path, compose_train) -> None:
    """A run folder as mtl-train leaves it: .hydra/config.yaml (the checkpoint itself is the test's)."""
    cfg = compose_train(["data.attributes=[Male,Smiling]"], run_dir=run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    OmegaConf.save(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
        run_dir / ".hydra" / "config.yaml",
    )


def test_eval_of_a_corrupt_checkpoint_in_a_run_folder(compose_train, tmp_path):
    from mtl_celeba.evaluate import evaluate

    run_dir = tmp_path / "run"
    write_run_folder(run_dir, compose_train)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    checkpoint.write_bytes(b"PK\x03\x04 not really a zip")
    eval_cfg = compose_train(
        [f"ckpt_path={checkpoint}"], run_dir=tmp_path / "eval", config_name="eval"
    )
    with pytest.raises(ConfigError, match="is not a readable checkpoint"):
        evaluate(eval_cfg, tmp_path / "eval")
    # a checkpoint whose tasks disagree with its run folder's config
    fake_checkpoint(checkpoint, tasks=("Young",))
    with pytest.raises(ConfigError, match=r"trained on tasks \['Young'\]"):
        evaluate(eval_cfg, tmp_path / "eval")


# ---------------------------------------------------------------- real command lines


def run_cli(module: str, *args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    """Run an entry point; stdout's last line says whether Lightning was ever imported."""
    code = textwrap.dedent(
        f"""
        import atexit, runpy, sys
        atexit.register(lambda: print("lightning imported:", "lightning" in sys.modules))
        sys.argv = ["{module}", *{list(args)!r}]
        runpy.run_module("{module}", run_name="__main__")
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("module", "args", "expected"),
    [
        ("mtl_celeba.train", ["data.image_size=abc"], "error: data.image_size is 'abc'"),
        ("mtl_celeba.train", ["data.imagesize=32"], "Did you mean data.image_size?"),
        ("mtl_celeba.train", ["seed=-1"], "error: seed is -1"),
        ("mtl_celeba.evaluate", [], "error: mtl-eval needs a checkpoint"),
        ("mtl_celeba.train", ["data.label_values=01"], "error: data.label_values is '01'"),
    ],
)
def test_cli_fails_fast_with_one_line(tmp_path, module, args, expected):
    done = run_cli(module, *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert expected in done.stderr
    assert done.stdout.strip().endswith("lightning imported: False"), "validated before importing"
    assert not (tmp_path / "run").exists(), "a config mistake leaves no run folder behind"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_trainer_gpu_without_a_gpu_fails_in_the_preflight(tmp_path):
    done = run_cli("mtl_celeba.train", "trainer=gpu", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "trainer.accelerator is gpu (trainer=gpu) but no GPU is visible" in done.stderr
    assert "use trainer=cpu" in done.stderr
    assert not (tmp_path / "run").exists(), "no run folder left"


# ------------------------------------------------------------------ labels (issue 22, item 1)


def write_celeba_files(root: Path, labels: dict[str, list[int]], partition: list[int]) -> Path:
    """A torchvision-layout CelebA of len(partition) images (no image files) with ``labels``."""
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    ids = [f"{i:06d}.jpg" for i in range(1, len(partition) + 1)]
    rows = [
        f"{image_id} " + " ".join(str(column[i]) for column in labels.values())
        for i, image_id in enumerate(ids)
    ]
    attributes_file = folder / "list_attr_celeba.txt"
    attributes_file.write_text(f"{len(ids)}\n{' '.join(labels)} \n" + "\n".join(rows) + "\n")
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{image_id} {split}\n" for image_id, split in zip(ids, partition, strict=True))
    )
    return attributes_file


PARTITION = [0, 0, 0, 0, 1, 1, 2, 2]


def test_a_zero_one_label_file_is_refused_naming_the_file_and_the_fix(tmp_path):
    from mtl_celeba.data.celeba import load_celeba
    from mtl_celeba.errors import DataError

    path = write_celeba_files(tmp_path, {"Male": [0, 1, 0, 1, 0, 1, 0, 1]}, PARTITION)
    with pytest.raises(DataError) as caught:
        load_celeba(tmp_path, ["Male"], check_images=False)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert "0/1 labels" in message and "data.label_values=binary" in message
    index = load_celeba(tmp_path, ["Male"], check_images=False, label_values="binary")
    np.testing.assert_array_equal(index.labels[:, 0], [0, 1, 0, 1, 0, 1, 0, 1])


def test_zero_as_missing_only_by_choice(tmp_path):
    from mtl_celeba.data.celeba import load_celeba
    from mtl_celeba.errors import DataError

    write_celeba_files(tmp_path, {"Male": [-1, 1, 0, 1, -1, 1, -1, 1]}, PARTITION)
    with pytest.raises(DataError, match=r"data\.label_values=signed_0_missing if 0 means missing"):
        load_celeba(tmp_path, ["Male"], check_images=False)
    index = load_celeba(tmp_path, ["Male"], check_images=False, label_values="signed_0_missing")
    assert np.isnan(index.labels[2, 0]) and np.nansum(index.labels) == 4
    with pytest.raises(DataError, match=r"data\.label_values=signed for CelebA's -1/1"):
        load_celeba(tmp_path, ["Male"], check_images=False, label_values="binary")


def test_label_values_is_checked_in_the_preflight():
    assert "data.label_values is 'yes': use one of signed, signed_0_missing, binary" in (
        train_error("data.label_values=yes")
    )


def test_label_value_choices_match_the_reader():
    from mtl_celeba.cli.validate import LABEL_VALUE_CHOICES
    from mtl_celeba.data.celeba import LABEL_VALUES

    assert tuple(LABEL_VALUES) == LABEL_VALUE_CHOICES


def test_each_task_needs_both_classes_in_train(tmp_path):
    from mtl_celeba.data.celeba import load_celeba
    from mtl_celeba.errors import DataError

    path = write_celeba_files(
        tmp_path,
        {"Male": [-1, 1, -1, 1, 1, 1, 1, -1], "Bald": [-1, -1, -1, -1, 1, -1, 1, -1]},
        PARTITION,
    )
    with pytest.raises(DataError) as caught:
        load_celeba(tmp_path, ["Male", "Bald"], check_images=False)
    message = str(caught.value)
    assert str(path) in message and "attribute Bald has no positive label among the 4" in message
    assert "drop it from data.attributes" in message


def test_eval_splits_without_both_classes_warn_per_task_and_tiny_splits_once(tmp_path):
    from mtl_celeba.data.datamodule import CelebADataModule

    # val: Male all positive, test: Male all negative; Bald fine everywhere
    write_celeba_files(
        tmp_path,
        {"Male": [-1, 1, -1, 1, 1, 1, -1, -1], "Bald": [-1, 1, -1, 1, -1, 1, 1, -1]},
        PARTITION,
    )
    datamodule = CelebADataModule(
        str(tmp_path), ["Male", "Bald"], pipeline="naive", check_images=False
    )
    with pytest.warns(UserWarning) as caught:
        datamodule.setup()
    messages = [str(w.message) for w in caught]
    assert any("val split has no negative Male label" in m for m in messages)
    assert any("test split has no positive Male label" in m for m in messages)
    assert not any("Bald" in m for m in messages)
    tiny = [m for m in messages if "Tiny evaluation splits" in m]
    assert len(tiny) == 1 and "val 2, test 2 images, under 20" in tiny[0]


def test_undefined_auroc_and_f1_are_nan_and_skipped_in_the_means():
    from mtl_celeba.models.metrics import TaskMetrics
    from mtl_celeba.run.results import format_table, results_table, split_results

    metrics = TaskMetrics(2)
    logits = torch.tensor([[2.0, 1.0], [-1.0, -2.0], [1.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])  # task 2: no positive
    metrics.update(logits, targets, torch.ones_like(targets, dtype=torch.bool))
    values = {name: value.tolist() for name, value in metrics.compute().items()}
    assert values["auroc"][0] == 1.0 and np.isnan(values["auroc"][1])
    assert values["f1"][0] == 1.0 and np.isnan(values["f1"][1])
    assert values["accuracy"] == [1.0, pytest.approx(1 / 3)]

    split = split_results(["Male", "Bald"], values)
    assert split["per_task"]["Bald"]["auroc"] is None and split["mean"]["auroc"] == 1.0
    assert split["mean"]["accuracy"] == pytest.approx(2 / 3)
    assert split["undefined"] == {"f1": 1, "auroc": 1}
    text = format_table(results_table({"test": split}))
    assert "n/a" in text and "left out of the means: f1 of 1, auroc of 1 task(s)" in text
    assert split_results(["Bald"], {**values, "auroc": [float("nan")]})["mean"]["auroc"] is None


# ------------------------------------------------------ records that say what ran (item 2)


def test_attribute_set_is_the_preset_only_when_the_list_is_the_presets():
    from mtl_celeba.data.attributes import ATTRIBUTE_PRESETS
    from mtl_celeba.run.results import attribute_set_name

    eight = list(ATTRIBUTE_PRESETS["assignment8"])
    assert attribute_set_name("assignment8", eight) == "assignment8"
    assert attribute_set_name("all40", list(ATTRIBUTE_PRESETS["all40"])) == "all40"
    assert attribute_set_name("assignment8", ["Male", "Young"]) == "custom[Male,Young]"
    assert attribute_set_name("assignment8", eight[::-1]).startswith("custom[Blond_Hair,")
    assert attribute_set_name(None, ["Male"]) == "custom[Male]"
    assert attribute_set_name("no_such_preset", ["Male"]) == "custom[Male]"


def test_the_record_says_what_ran(compose_train, tmp_path):
    """A custom list under the default preset is recorded as custom; 16-mixed on a CPU as bf16."""
    from mtl_celeba.run.results import read_results
    from mtl_celeba.train import train

    run_dir = tmp_path / "run"
    cfg = compose_train(
        ["data.attributes=[Male,Smiling]", "trainer.max_epochs=1", "trainer.precision=16-mixed"],
        run_dir=run_dir,
    )
    train(cfg, run_dir)
    record = read_results(run_dir)
    assert record["status"] == "completed"
    assert record["config"]["attribute_set"] == "custom[Male,Smiling]"
    assert record["config"]["precision"] == "bf16-mixed"
