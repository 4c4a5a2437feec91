"""Faults with one line and an honest record, nothing lost (issue 22, items 3-5).

Each case is fed as a user would meet it and checked for the exit status (or the
:class:`UserError`), the one line naming the file or setting, the record and what is left on disk.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from mtl_celeba.cli.hydra_app import preflight
from mtl_celeba.cli.validate import validate_train_config
from mtl_celeba.config import PROJECT_ROOT, instantiate
from mtl_celeba.errors import ConfigError, DataError, UserError
from mtl_celeba.io import remove_leftover_temporaries

# ---------------------------------------------------------------- damaged or foreign checkpoints


def save_checkpoint(path: Path, model: torch.nn.Module, **changes) -> Path:
    """A checkpoint of ``model`` as mtl-train writes one (what Lightning's loader reads), with
    ``changes``: ``state_dict`` or ``hyper_parameters`` replaced."""
    state = {
        "epoch": 0,
        "global_step": 7,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": dict(model.state_dict()),
        "hyper_parameters": dict(model.hparams),
        **changes,
    }
    torch.save(state, path)
    return path


def png_bytes() -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


def damaged_checkpoints(folder: Path, model: torch.nn.Module) -> dict[str, tuple[Path, str]]:
    """Each damaged or foreign checkpoint a user may pass, with what its one line must say."""
    folder.mkdir(parents=True, exist_ok=True)
    good = save_checkpoint(folder / "good.ckpt", model)
    weights = dict(model.state_dict())
    extra = {**weights, "heads.Bald.weight": torch.zeros(1, 16)}
    name = sorted(k for k in weights if k.startswith("heads."))[0]
    missing = {k: v for k, v in weights.items() if k != name}
    shape = list(weights[name].shape)
    reshaped = {**weights, name: torch.zeros(shape[0] + 1, *shape[1:])}
    cases = {
        "junk": (folder / "junk.ckpt", "is not a readable checkpoint"),
        "png": (folder / "png.ckpt", "is not a readable checkpoint"),
        "truncated": (folder / "truncated.ckpt", "is not a readable checkpoint"),
        "extra keys": (
            save_checkpoint(folder / "extra.ckpt", model, state_dict=extra),
            "1 weights the model does not have (heads.Bald.weight)",
        ),
        "missing keys": (
            save_checkpoint(folder / "missing.ckpt", model, state_dict=missing),
            f"1 weights missing ({name})",
        ),
        "other shapes": (
            save_checkpoint(folder / "shapes.ckpt", model, state_dict=reshaped),
            f"{name}",
        ),
        "unknown hyperparameters": (
            save_checkpoint(
                folder / "hparams.ckpt",
                model,
                hyper_parameters={**model.hparams, "gate_temperature": 2.0},
            ),
            "hyperparameters this version does not take: gate_temperature",
        ),
    }
    cases["junk"][0].write_bytes(os.urandom(4096))
    cases["png"][0].write_bytes(png_bytes())
    cases["truncated"][0].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return cases


@pytest.fixture
def tiny_model(compose_train):
    cfg = compose_train(["data.attributes=[Male,Smiling]"])
    return cfg, instantiate(cfg.model)


def one_line_naming(error: BaseException, path: Path, expected: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert str(path) in message, message
    assert expected in message, message


def test_load_model_refuses_damaged_and_foreign_checkpoints(tiny_model, tmp_path):
    from mtl_celeba.cli.checkpoints import load_model

    _, model = tiny_model
    for name, (path, expected) in damaged_checkpoints(tmp_path / "ckpts", model).items():
        with pytest.raises(ConfigError) as caught:
            load_model(path)
        one_line_naming(caught.value, path, expected)
        if name in ("extra keys", "missing keys", "unknown hyperparameters"):
            assert "another version of the model" in str(caught.value), name
    assert load_model(tmp_path / "ckpts" / "good.ckpt").tasks == ["Male", "Smiling"]


def write_run_folder(run_dir: Path, cfg) -> None:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    OmegaConf.save(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
        run_dir / ".hydra" / "config.yaml",
    )


def test_every_command_that_loads_a_checkpoint_gives_one_line(tiny_model, compose_train, tmp_path):
    """mtl-eval, mtl-predict and mtl-train ckpt_path=... on each damaged or foreign checkpoint;
    mtl-train records the error as failed in its metrics.json."""
    from mtl_celeba.evaluate import evaluate
    from mtl_celeba.predict import predict
    from mtl_celeba.run.resume import read_status
    from mtl_celeba.train import train

    cfg, model = tiny_model
    run_dir = tmp_path / "run"
    write_run_folder(run_dir, cfg)
    cases = damaged_checkpoints(run_dir / "checkpoints", model)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 48), (120, 90, 60)).save(photos / "face.jpg")
    for name, (path, expected) in cases.items():
        predict_cfg = OmegaConf.create(
            {"ckpt_path": str(path), "images": str(photos), "batch_size": 2, "device": "cpu"}
            | {"threshold": 0.5, "grid_images": 0}
        )
        with pytest.raises(UserError) as caught:
            predict(predict_cfg, tmp_path / "predict")
        one_line_naming(caught.value, path, expected)
        eval_cfg = compose_train([f"ckpt_path={path}"], tmp_path / "eval", config_name="eval")
        with pytest.raises(UserError) as caught:
            evaluate(eval_cfg, tmp_path / "eval")
        one_line_naming(caught.value, path, expected)
        if name in ("junk", "png", "truncated"):
            continue  # mtl-train's own check of these is tested in test_bad_inputs.py
        train_dir = tmp_path / f"train-{name.replace(' ', '-')}"
        train_cfg = compose_train(
            ["data.attributes=[Male,Smiling]", f"ckpt_path={path}"], run_dir=train_dir
        )
        with pytest.raises(UserError) as caught:
            train(train_cfg, train_dir)
        one_line_naming(caught.value, path, expected)
        status = read_status(train_dir)
        assert status["status"] == "failed" and expected in status["error"], name


def test_predict_outside_a_run_folder_names_the_checkpoint(tiny_model, tmp_path):
    from mtl_celeba.predict import predict

    _, model = tiny_model
    loose = save_checkpoint(tmp_path / "downloaded.ckpt", model)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 48)).save(photos / "face.jpg")
    cfg = OmegaConf.create(
        {"ckpt_path": str(loose), "images": str(photos), "batch_size": 2, "device": "cpu"}
        | {"threshold": 0.5, "grid_images": 0}
    )
    with pytest.raises(ConfigError) as caught:
        predict(cfg, tmp_path / "out")
    one_line_naming(caught.value, loose, "is not inside a run folder written by mtl-train")


def run_module(module: str, *args: str, cwd: Path = PROJECT_ROOT, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_mtl_predict_with_a_png_checkpoint_exits_2_with_one_line(tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(png_bytes())
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (40, 48)).save(photos / "face.jpg")
    done = run_module(
        "mtl_celeba.predict",
        f"ckpt_path={checkpoint}",
        f"images={photos}",
        f"hydra.run.dir={tmp_path / 'out'}",
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(checkpoint) in errors[0], done.stderr[-2000:]
    assert "is not a readable checkpoint" in errors[0]
    assert "Traceback" not in done.stderr and ".hydra/config.yaml" not in errors[0]


# ---------------------------------------------------------------- leftover temporary files


def test_leftover_temporaries_are_removed_on_the_next_start(compose_train, tmp_path, caplog):
    from mtl_celeba.train import train

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    left = [run_dir / ".metrics.json.k3j2.tmp", run_dir / "checkpoints" / ".last.ckpt.x8a1.tmp"]
    for path in left:
        path.write_bytes(b"half a file")
    kept = run_dir / "checkpoints" / "epoch001-acc0.5.ckpt"
    kept.write_bytes(b"a checkpoint")
    cfg = compose_train(["data.image_size=abc"], run_dir=run_dir)  # fails at once, after it
    with caplog.at_level(logging.INFO), pytest.raises(ConfigError):
        train(cfg, run_dir)
    assert not any(path.exists() for path in left) and kept.exists()
    assert "Removed 2 temporary files left by a killed write" in caplog.text
    assert ".metrics.json.k3j2.tmp" in caplog.text
    assert remove_leftover_temporaries(run_dir, run_dir / "checkpoints") == []


# ---------------------------------------------------------------- unwritable folders


@pytest.fixture
def read_only_folder(tmp_path):
    """A read-only tmpfs mount (root ignores permission bits, not a read-only filesystem)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if shutil.which("mount") is None or sys.platform != "linux":
        pytest.skip("needs Linux mount")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_unwritable_run_or_sweep_folder_is_one_line_in_the_preflight(read_only_folder):
    run = read_only_folder / "outputs" / "run1"
    with pytest.raises(ConfigError) as caught:
        preflight("train", [f"hydra.run.dir={run}"], validate_train_config)
    message = str(caught.value)
    assert "\n" not in message
    assert f"hydra.run.dir {run} cannot be written ({read_only_folder}" in message
    assert "point hydra.run.dir at a writable folder" in message
    with pytest.raises(ConfigError, match=r"hydra\.sweep\.dir .* cannot be written"):
        preflight("train", ["-m", f"hydra.sweep.dir={run}", "seed=0,1"], validate_train_config)


@pytest.mark.slow
def test_mtl_train_into_a_read_only_outputs_folder_exits_2_leaving_nothing(read_only_folder):
    started = time.monotonic()
    done = run_module("mtl_celeba.train", f"hydra.run.dir={read_only_folder / 'run'}", timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: hydra.run.dir ") and done.stderr.count("\n") == 1
    assert "Errno 30" not in done.stderr
    assert list(read_only_folder.iterdir()) == []
    assert time.monotonic() - started < 60, "fails in the preflight, before the heavy imports"


def chattr(flag: str, path: Path) -> bool:
    return subprocess.run(["chattr", "-R", flag, str(path)], capture_output=True).returncode == 0


@pytest.mark.slow
def test_run_folder_turned_read_only_mid_run(synthetic_root, tmp_path):
    """The folder made immutable once the first epoch's last.ckpt is written: the run ends with
    one line keeping the first error and saying the record could not be written; resume=auto
    does not pick the folder while it stays unwritable."""
    from mtl_celeba.run.resume import is_resumable

    probe = tmp_path / "probe"
    probe.mkdir()
    if shutil.which("chattr") is None or not chattr("+i", probe):
        pytest.skip("needs chattr +i (root on a filesystem with immutable files)")
    chattr("-i", probe)
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "mtl_celeba.train", f"hydra.run.dir={run}",
        f"data.root={synthetic_root}", "data.num_images=400", f"data.cache_dir={tmp_path / 'c'}",
        "data.image_size=32", "data.batch_size=32", "data.cache_workers=1",
        "trainer.max_epochs=3", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "model.head_hidden=[16]", "strategy=mtl",
    ]  # fmt: skip
    err = tmp_path / "stderr.txt"
    try:
        with err.open("w") as stderr:
            process = subprocess.Popen(
                command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=stderr
            )
            deadline = time.monotonic() + 1800
            while not (run / "checkpoints" / "last.ckpt").is_file():
                assert process.poll() is None, err.read_text()[-3000:]
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.5)  # let the checkpoint's rename finish
            assert chattr("+i", run)
            returncode = process.wait(timeout=1200)
        output = err.read_text()
        assert returncode == 2, output[-3000:]
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, output[-3000:]
        assert "cannot write" in errors[0] and "Operation not permitted" in errors[0]
        assert "could not be written" in errors[0] and "resume=auto skips" in errors[0]
        assert "Traceback" not in output, output[-3000:]
        status = json.loads((run / "metrics.json").read_text())
        assert status["status"] == "running"
        assert not is_resumable(run, status["config_hash"]), "an unwritable folder is skipped"
    finally:
        chattr("-i", run)
    assert is_resumable(run, status["config_hash"]), "writable again: resume=auto continues it"


# ---------------------------------------------------------------- data known in the preflight


def write_celeba(root: Path, names: list[str], partition: list[int]) -> Path:
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    ids = [f"{i:06d}.jpg" for i in range(1, len(partition) + 1)]
    rows = [
        f"{image_id} " + " ".join("1" if i % 2 else "-1" for _ in names)
        for i, image_id in enumerate(ids)
    ]
    (folder / "list_attr_celeba.txt").write_text(
        f"{len(ids)}\n{' '.join(names)}\n" + "\n".join(rows) + "\n"
    )
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{image_id} {split}\n" for image_id, split in zip(ids, partition, strict=True))
    )
    return folder


def preflight_error(*overrides: str) -> UserError:
    with pytest.raises(UserError) as caught:
        preflight("train", list(overrides), validate_train_config)
    assert "\n" not in str(caught.value)
    return caught.value


def test_attributes_are_checked_against_the_files_header(tmp_path):
    folder = write_celeba(tmp_path, ["Male", "smiling", "Young"], [0, 0, 0, 0, 1, 1, 2, 2])
    error = preflight_error(
        "data=celeba", f"data.root={tmp_path}", "data.attributes=[Male,Smiling]"
    )
    assert isinstance(error, DataError)
    assert f"{folder / 'list_attr_celeba.txt'} has no column 'Smiling'" in str(error)
    assert "Did you mean smiling?" in str(error)
    # a typo is caught against CelebA's 40 names with a did-you-mean, synthetic data included
    assert "Did you mean Smiling" in str(preflight_error("data.attributes=[Smilling]"))
    assert "strategy.task has unknown attribute" in str(
        preflight_error("strategy=stl", "strategy.task=Yuong")
    )
    preflight(
        "train", ["data=celeba", f"data.root={tmp_path}", "data.attributes=[Male,Young]"],
        validate_train_config,
    )  # fmt: skip


def test_split_sizes_are_checked_in_the_preflight(tmp_path):
    write_celeba(tmp_path, ["Male", "Smiling"], [0, 0, 0, 0, 2, 2])
    error = preflight_error("data=celeba", f"data.root={tmp_path}", "data.attributes=[Male]")
    assert "the val split of" in str(error) and "has no images" in str(error)
    assert "list_eval_partition.txt" in str(error)
    error = preflight_error("data.num_images=1")
    assert "data.num_images is 1: choose between 10 and" in str(error)


@pytest.mark.slow
def test_preflight_data_mistakes_fail_fast_leaving_no_run_folder(tmp_path):
    started = time.monotonic()
    done = run_module(
        "mtl_celeba.train", "data.num_images=1", f"hydra.run.dir={tmp_path / 'run'}", timeout=120
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert "data.num_images is 1" in done.stderr
    assert not (tmp_path / "run").exists()
    assert time.monotonic() - started < 60


# ---------------------------------------------------------------- a decompression bomb


def test_decompression_bomb_in_the_cache_build_is_one_line_and_leaves_no_lock(
    tmp_path, monkeypatch
):
    from mtl_celeba.data.cache import load_or_build_cache

    images = tmp_path / "img"
    images.mkdir()
    for name in ("000001.jpg", "000002.jpg"):
        Image.new("RGB", (178, 218), (100, 80, 60)).save(images / name)
    Image.new("RGB", (400, 400)).save(images / "000003.png")
    # what a 196-megapixel image does under PIL's default limit, cheaply: a lower limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400 * 400 // 3)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as caught:
        load_or_build_cache(cache, "train", images, ["000001.jpg", "000002.jpg", "000003.png"], 32)
    message = str(caught.value)
    assert "\n" not in message and str(images / "000003.png") in message
    assert "too large to decode safely" in message
    assert list(cache.iterdir()) == [], "no partial cache, lock or heartbeat file left"


def test_a_good_build_leaves_only_the_cache_file(tmp_path):
    from mtl_celeba.data.cache import load_or_build_cache

    images = tmp_path / "img"
    images.mkdir()
    Image.new("RGB", (178, 218)).save(images / "000001.jpg")
    cache = tmp_path / "cache"
    array = load_or_build_cache(cache, "val", images, ["000001.jpg"], 16)
    assert array.shape == (1, 16, 16, 3)
    assert [path.suffix for path in cache.iterdir()] == [".npy"]


def test_an_unwritable_file_mid_run_is_recorded_as_failed_with_one_line(tmp_path):
    from mtl_celeba.errors import UnwritableError
    from mtl_celeba.run.lifecycle import RunRecord
    from mtl_celeba.run.resume import read_status

    target = tmp_path / "checkpoints" / "epoch002.ckpt"
    with pytest.raises(UnwritableError) as caught, RunRecord(tmp_path, "hash"):
        raise PermissionError(errno.EACCES, "Permission denied", str(target))
    assert f"cannot write {target} (Permission denied)" in str(caught.value)
    status = read_status(tmp_path)
    assert status["status"] == "failed" and str(target) in status["error"]


def test_a_background_threads_error_is_one_line_and_kept_as_the_first(tmp_path, caplog, capsys):
    """TensorBoard's writer thread fails first; the training loop's later error is a consequence."""
    from mtl_celeba.errors import UnwritableError
    from mtl_celeba.run.lifecycle import RunRecord
    from mtl_celeba.run.resume import read_status

    events = tmp_path / "tensorboard" / "events.out.tfevents.1"

    def writer() -> None:
        raise PermissionError(errno.EROFS, "Read-only file system", str(events))

    with pytest.raises(UnwritableError) as caught, RunRecord(tmp_path, "hash"):
        thread = threading.Thread(target=writer, name="writer")
        thread.start()
        thread.join()
        raise RuntimeError("Exception in _AsyncWriterThread")
    assert f"cannot write {events} (Read-only file system)" in str(caught.value)
    assert "background thread writer failed: PermissionError" in caplog.text
    assert "Traceback" not in capsys.readouterr().err
    assert str(events) in read_status(tmp_path)["error"]
