"""The published results shipped with the report: FAMO's single-task F1 on CelebA-40 and the
``--literature`` tables, their checks, and the column they add beside the measured Δm%."""

from __future__ import annotations

import pandas as pd
import pytest

from mtl_celeba.data.attributes import CELEBA_ATTRIBUTES
from mtl_celeba.errors import ConfigError, UserError
from mtl_celeba.report.__main__ import report_parser
from mtl_celeba.report.compare import read_stl_reference
from mtl_celeba.report.literature import (
    LITERATURE_DIR,
    PUBLISHED,
    available,
    beside,
    read_literature,
)

STL_F1 = LITERATURE_DIR / "famo_celeba40_stl_f1.csv"


def test_famo_stl_f1_is_the_authors_forty_values_in_celebas_order():
    table = pd.read_csv(STL_F1)
    assert list(table["task"]) == list(CELEBA_ATTRIBUTES)
    assert set(table["backbone"]) == {"famo_cnn"}
    assert table["source"].str.contains("Cranial-XIX/FAMO/issues/2").all()
    # first, Eyeglasses (16th) and last values as the authors wrote them in the issue
    values = dict(zip(table["task"], table["f1"], strict=True))
    assert values["5_o_Clock_Shadow"] == 0.6736886
    assert values["Eyeglasses"] == 0.95694304
    assert values["Young"] == 0.91907
    assert table["f1"].between(0, 1).all()


def test_famo_stl_f1_is_a_valid_stl_reference():
    reference = read_stl_reference(STL_F1, "f1", ["famo_cnn"])
    assert len(reference) == 40
    assert set(reference["backbone"]) == {"famo_cnn"}


def test_the_packaged_table_loads_and_every_row_cites_its_source():
    assert "famo_celeba40" in available()
    assert "famo_celeba40_stl_f1" not in available()
    table = read_literature("famo_celeba40")
    assert list(table.columns) == ["strategy", "delta_m", "source"]
    assert table["source"].str.strip().astype(bool).all()


def test_an_unknown_table_name_is_one_clear_line():
    with pytest.raises(ConfigError, match="--literature"):
        read_literature("famo_celeba")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('nosuch,1.0,"Paper, Table 1"', "unknown strategy"),
        ("famo,abc,Paper Table 1", "delta_m is not a number"),
        ("famo,1.0,", "cite the paper"),
    ],
)
def test_a_bad_row_is_refused_with_its_line(tmp_path, row, message):
    path = tmp_path / "table.csv"
    path.write_text(f'strategy,delta_m,source\nmgda,2.0,"Paper, Table 1"\n{row}\n')
    with pytest.raises(UserError, match=f"line 3: {message}"):
        read_literature(path)


def test_a_repeated_strategy_is_refused(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("strategy,delta_m,source\nfamo,1.0,A\nfamo,2.0,B\n")
    with pytest.raises(UserError, match="more than one row for famo"):
        read_literature(path)


def test_published_values_go_beside_their_strategy(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("strategy,delta_m,source\nfairgrad,0.5,A\ndst,-1.25,B\n")
    summary = pd.DataFrame(
        {"configuration": ["mtl", "fairgrad", "dst (all)"], "Δm% vs STL": ["+0.1", "-0.2", "+0.3"]}
    )
    out = beside(summary, read_literature(path))
    assert list(out[PUBLISHED]) == ["", "+0.50", "-1.25"]
    assert list(out["Δm% vs STL"]) == ["+0.1", "-0.2", "+0.3"]


def test_the_command_line_takes_literature():
    args = report_parser().parse_args(["runs", "--literature", "famo_celeba40"])
    assert args.literature == "famo_celeba40"


def test_the_famo_stl_companion_keeps_the_protocol_and_trains_each_attribute_alone():
    """experiment=famo_celeba40_stl: famo_celeba40's settings, strategy stl, 40 one-task jobs."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from mtl_celeba.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        protocol = compose("train", overrides=["experiment=famo_celeba40"])
        companion = compose(
            "train", overrides=["experiment=famo_celeba40_stl"], return_hydra_config=True
        )
    for key in ("data", "model", "trainer", "callbacks"):
        assert OmegaConf.to_container(companion[key]) == OmegaConf.to_container(protocol[key])
    assert companion.strategy.name == "stl"
    assert companion.hydra.sweeper.skip_completed is True
    tasks = OmegaConf.to_container(companion.hydra.sweeper.params, resolve=True)["strategy.task"]
    assert tasks.split(",") == list(CELEBA_ATTRIBUTES)
