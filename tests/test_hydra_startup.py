"""Start-up is quiet: the current hydra-core emits no deprecation or migration warnings for our apps."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from mtl_celeba.config import PROJECT_ROOT

#: Starts each entry point (composing its config, without training) with several
#: command lines in one process, every warning printed (-W always).
STARTS = textwrap.dedent(
    """
    import sys
    from hydra.core.global_hydra import GlobalHydra
    from mtl_celeba import evaluate, train

    for main, arguments in [
        (train.main, ["--cfg", "job"]),
        (train.main, ["--cfg", "hydra", "experiment=dst_vs_baselines"]),
        (train.main, ["--cfg", "hydra", "hydra/launcher=gpu_pool"]),
        (train.main, ["--info", "plugins"]),  # imports every installed Hydra plugin
        (evaluate.main, ["--cfg", "job", "ckpt_path=x.ckpt"]),
    ]:
        GlobalHydra.instance().clear()
        sys.argv = ["mtl", *arguments]
        main()
        print("started:", *arguments, file=sys.stderr)
    """
)


def hydra_warnings(stderr: str) -> list[str]:
    """The warning lines on stderr that come from Hydra or OmegaConf, or mention them."""
    return [
        line
        for line in stderr.splitlines()
        if "Warning" in line
        and any(word in line.lower() for word in ("hydra", "omegaconf", "version_base"))
    ]


def test_hydra_warnings_are_detected(tmp_path: Path) -> None:
    """The check sees Hydra's warning for an app without version_base."""
    script = "import hydra\n@hydra.main(config_path=None)\ndef app(cfg): pass\napp()\n"
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", script, f"hydra.run.dir={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert hydra_warnings(done.stderr), done.stderr


def test_no_hydra_warnings_at_start_up() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", STARTS],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("started:") == 5, done.stderr[-2000:]
    assert hydra_warnings(done.stderr) == []
    assert "Hydra14MigrationWarning" not in done.stderr
