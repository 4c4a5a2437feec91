"""Reading real CelebA: the three layouts, the exact file formats, and every user error."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from fake_celeba import LAYOUTS, write_fake_celeba
from omegaconf import OmegaConf

from mtl_celeba.config import CONFIG_DIR
from mtl_celeba.data.attributes import ATTRIBUTE_PRESETS, CELEBA_ATTRIBUTES
from mtl_celeba.data.celeba import (
    find_layout,
    load_celeba,
    read_attribute_file,
    read_partition_file,
)
from mtl_celeba.errors import ConfigError, DataError

EIGHT = list(ATTRIBUTE_PRESETS["assignment8"])


def assert_index_matches(root: Path, fake, attributes=EIGHT) -> None:
    index = load_celeba(root, attributes, label_values="signed_0_missing")  # fakes write 0
    assert index.attributes == list(attributes)
    assert index.image_ids.tolist() == fake.image_ids
    assert index.labels.dtype == np.float32 and index.partition.dtype == np.int8
    np.testing.assert_array_equal(index.labels, fake.labels(attributes))
    np.testing.assert_array_equal(index.partition, fake.partition)


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_parses(tmp_path: Path, layout: str, crlf: bool) -> None:
    fake = write_fake_celeba(tmp_path, layout, crlf=crlf, missing_labels=10)
    found = find_layout(tmp_path)
    assert (found.name, found.image_dir, found.attributes_file) == (
        layout,
        fake.image_dir,
        fake.attributes_file,
    )
    assert_index_matches(tmp_path, fake)


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_kaggle_csv_with_empty_first_header_cell(tmp_path: Path, crlf: bool) -> None:
    fake = write_fake_celeba(
        tmp_path, "kaggle", crlf=crlf, empty_first_header_cell=True, missing_labels=6
    )
    assert fake.attributes_file.read_bytes().startswith(b",5_o_Clock_Shadow,")
    assert_index_matches(tmp_path, fake)
    frame = read_attribute_file(fake.attributes_file, "signed_0_missing")
    assert frame.index.name == "image_id" and list(frame.columns) == list(CELEBA_ATTRIBUTES)


def test_kaggle_images_not_nested(tmp_path: Path) -> None:
    fake = write_fake_celeba(tmp_path, "kaggle")
    fake.image_dir.rename(tmp_path / "flat")
    (tmp_path / "img_align_celeba").rmdir()
    (tmp_path / "flat").rename(tmp_path / "img_align_celeba")
    assert find_layout(tmp_path).image_dir == tmp_path / "img_align_celeba"


def test_root_may_be_torchvision_celeba_folder(tmp_path: Path) -> None:
    fake = write_fake_celeba(tmp_path, "torchvision")
    layout = find_layout(tmp_path / "celeba")
    assert layout.name == "torchvision" and layout.image_dir == fake.image_dir
    assert_index_matches(tmp_path / "celeba", fake)


def test_same_labels_in_every_layout(tmp_path: Path) -> None:
    indexes = []
    for layout in LAYOUTS:
        write_fake_celeba(tmp_path / layout, layout, seed=3, missing_labels=20)
        indexes.append(
            load_celeba(tmp_path / layout, CELEBA_ATTRIBUTES, label_values="signed_0_missing")
        )
    first = indexes[0]
    assert np.isnan(first.labels).sum() == 20
    for other in indexes[1:]:
        np.testing.assert_array_equal(other.image_ids, first.image_ids)
        np.testing.assert_array_equal(other.labels, first.labels)  # NaN equals NaN here
        np.testing.assert_array_equal(other.partition, first.partition)


def test_label_values_txt(tmp_path: Path) -> None:
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text("3\nBald Young \n000001.jpg -1  1\n000002.jpg  1  0\n000003.jpg  0 -1\n")
    frame = read_attribute_file(path, "signed_0_missing")
    assert frame.index.tolist() == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert list(frame.columns) == ["Bald", "Young"]
    assert (frame.dtypes == np.float32).all()
    expected = np.array([[0, 1], [1, np.nan], [np.nan, 0]], dtype=np.float32)
    np.testing.assert_array_equal(frame.to_numpy(), expected)


def test_label_values_csv(tmp_path: Path) -> None:
    path = tmp_path / "list_attr_celeba.csv"
    path.write_text(
        "image_id,Bald,Young\r\n000001.jpg,-1,1\r\n000002.jpg,1,\r\n000003.jpg,0,-1\r\n"
    )
    expected = np.array([[0, 1], [1, np.nan], [np.nan, 0]], dtype=np.float32)
    np.testing.assert_array_equal(
        read_attribute_file(path, "signed_0_missing").to_numpy(), expected
    )


def test_partition_files(tmp_path: Path) -> None:
    txt = tmp_path / "list_eval_partition.txt"
    txt.write_text("000001.jpg 0\r\n000002.jpg 1\r\n000003.jpg 2\r\n")
    csv = tmp_path / "list_eval_partition.csv"
    csv.write_text("image_id,partition\n000001.jpg,0\n000002.jpg,1\n000003.jpg,2\n")
    for path in (txt, csv):
        partition = read_partition_file(path)
        assert partition.dtype == np.int8
        assert partition.to_dict() == {"000001.jpg": 0, "000002.jpg": 1, "000003.jpg": 2}


def test_splits_follow_partition_file(tmp_path: Path) -> None:
    fake = write_fake_celeba(tmp_path, "original", num_images=30, missing_labels=5)
    index = load_celeba(tmp_path, EIGHT, label_values="signed_0_missing")
    labels = fake.labels(EIGHT)
    seen = []
    for code, name in enumerate(("train", "val", "test")):
        image_ids, split_labels = index.split(name)
        rows = fake.partition == code
        assert image_ids.tolist() == np.array(fake.image_ids)[rows].tolist()
        np.testing.assert_array_equal(split_labels, labels[rows])
        seen += image_ids.tolist()
    assert len(index.split("train")[0]) == 18 and len(index.split("test")[0]) == 6
    assert sorted(seen) == fake.image_ids
    assert index.image_path("000007.jpg") == fake.image_dir / "000007.jpg"


def test_attribute_order_follows_request(tmp_path: Path) -> None:
    fake = write_fake_celeba(tmp_path)
    requested = ["Young", "Bald", "Eyeglasses", "5_o_Clock_Shadow"]
    index = load_celeba(tmp_path, requested)
    assert index.attributes == requested
    np.testing.assert_array_equal(index.labels, fake.labels(requested))
    assert index.labels[:, 0].tolist() == ((fake.values[:, 39] + 1) / 2).tolist()


# --- user errors: one DataError/ConfigError sentence naming the file or key ---


def test_no_layout_names_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "something.txt").write_text("hello")
    with pytest.raises(DataError, match="holds no CelebA layout") as error:
        load_celeba(tmp_path, EIGHT)
    message = str(error.value)
    for looked_for in ("Anno/list_attr_celeba.txt", "Eval/list_eval_partition.txt", ".csv"):
        assert looked_for in message
    with pytest.raises(DataError, match="is not a folder"):
        find_layout(tmp_path / "nowhere")


def test_partial_layout_names_missing_file(tmp_path: Path) -> None:
    fake = write_fake_celeba(tmp_path, "original")
    fake.partition_file.unlink()
    with pytest.raises(
        DataError,
        match=r"incomplete CelebA copy \(original: missing .*Eval/list_eval_partition\.txt\)",
    ):
        find_layout(tmp_path)
    write_fake_celeba(tmp_path / "kaggle", "kaggle")
    shutil.rmtree(tmp_path / "kaggle" / "img_align_celeba")
    with pytest.raises(DataError, match=r"kaggle: missing .*img_align_celeba/img_align_celeba\)"):
        find_layout(tmp_path / "kaggle")


def test_count_line_must_match_rows(tmp_path: Path) -> None:
    fake = write_fake_celeba(tmp_path, crlf=True)
    text = fake.attributes_file.read_bytes().replace(b"24\r\n", b"25\r\n", 1)
    fake.attributes_file.write_bytes(text)
    with pytest.raises(
        DataError, match=r"list_attr_celeba\.txt says it holds 25 images but has 24"
    ):
        load_celeba(tmp_path, EIGHT)
    fake.attributes_file.write_text("5_o_Clock_Shadow Bald \n000001.jpg -1  1\n")
    with pytest.raises(DataError, match=r"should start with a line holding the image count"):
        load_celeba(tmp_path, EIGHT)


def test_value_outside_minus_one_zero_one(tmp_path: Path) -> None:
    txt = tmp_path / "list_attr_celeba.txt"
    txt.write_text("2\nBald Young \n000001.jpg -1  1\n000002.jpg  1  2\n")
    with pytest.raises(DataError, match=r"\.txt has value 2 for image 000002\.jpg in column Young"):
        read_attribute_file(txt)
    csv = tmp_path / "list_attr_celeba.csv"
    csv.write_text("image_id,Bald,Young\n000001.jpg,-1,1\n000002.jpg,yes,1\n")
    with pytest.raises(
        DataError, match=r"\.csv has value 'yes' for image 000002\.jpg in column Bald"
    ):
        read_attribute_file(csv)


def test_malformed_rows(tmp_path: Path) -> None:
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text("2\nBald Young \n000001.jpg -1\n000002.jpg  1\n")
    with pytest.raises(DataError, match=r"\.txt has 1 values per row but its header names 2"):
        read_attribute_file(path)
    path.write_text("2\nBald Young \n000001.jpg -1\n000002.jpg  1 -1\n")
    with pytest.raises(DataError, match=r"\.txt \(Expected 2 fields in line 4, saw 3\)"):
        read_attribute_file(path)
    path.write_text("2\nBald Young \n000001.jpg -1  1\n000002.jpg  1\n")
    with pytest.raises(DataError, match=r"fewer values than the header names, for image 000002"):
        read_attribute_file(path)
    path.write_text("2\nBald Young \n000001.jpg -1  1\n000002.jpg  1  1  1\n")
    with pytest.raises(DataError, match=r"Cannot parse .*list_attr_celeba\.txt"):
        read_attribute_file(path)
    path.write_text("2\nBald Young \n000001.jpg -1  1\n000001.jpg  1  1\n")
    with pytest.raises(DataError, match=r"lists 1 image ids more than once \(e\.g\. 000001\.jpg\)"):
        read_attribute_file(path)
    partition = tmp_path / "list_eval_partition.txt"
    partition.write_text("000001.jpg 0\n000002.jpg 3\n")
    with pytest.raises(DataError, match=r"value 3 for image 000002\.jpg in column partition"):
        read_partition_file(partition)


def test_unknown_attribute_suggests_close_names(tmp_path: Path) -> None:
    write_fake_celeba(tmp_path)
    with pytest.raises(
        ConfigError, match=r"data\.attributes has unknown attribute 'Smilling'.*Smiling"
    ):
        load_celeba(tmp_path, ["Male", "Smilling"])


def test_attribute_missing_from_file(tmp_path: Path) -> None:
    write_fake_celeba(tmp_path, "kaggle", attributes=["Male", "Young"])
    with pytest.raises(DataError, match=r"list_attr_celeba\.csv has no column Smiling"):
        load_celeba(tmp_path, ["Male", "Smiling"])


def test_files_disagree_on_image_ids(tmp_path: Path) -> None:
    write_fake_celeba(tmp_path, "original", mismatched_ids=3)
    with pytest.raises(
        DataError,
        match=r"list_attr_celeba\.txt and .*list_eval_partition\.txt disagree on image ids "
        r"\(3 only in list_attr_celeba\.txt, e\.g\. 000022\.jpg, 000023\.jpg, 000024\.jpg; "
        r"3 only in list_eval_partition\.txt, e\.g\. 900022\.jpg",
    ):
        load_celeba(tmp_path, EIGHT)


def test_missing_images(tmp_path: Path) -> None:
    fake = write_fake_celeba(tmp_path, "kaggle", missing_images=2)
    with pytest.raises(
        DataError,
        match=r"2 of 24 listed images are missing from .*\(e\.g\. 000023\.jpg, 000024\.jpg\)",
    ):
        load_celeba(tmp_path, EIGHT)
    index = load_celeba(tmp_path, EIGHT, check_images=False)
    assert len(index.image_ids) == 24
    assert not index.image_path("000024.jpg").exists()
    assert fake.image_dir == index.layout.image_dir


def test_torchvision_reads_the_same_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("torchvision.datasets")
    write_fake_celeba(tmp_path, "torchvision", crlf=True, missing_labels=15)
    # torchvision checks MD5 sums of the real files; its own tests patch the check out too
    monkeypatch.setattr(datasets.CelebA, "_check_integrity", lambda self: True)
    reference = datasets.CelebA(tmp_path, split="all", target_type="attr", download=False)
    index = load_celeba(tmp_path, CELEBA_ATTRIBUTES, label_values="signed_0_missing")
    assert [name for name in reference.attr_names if name] == list(CELEBA_ATTRIBUTES)
    assert list(reference.filename) == index.image_ids.tolist()
    labelled = ~np.isnan(index.labels)
    assert labelled.sum() == index.labels.size - 15
    np.testing.assert_array_equal(reference.attr.numpy()[labelled], index.labels[labelled])
    for code, split in enumerate(("train", "valid", "test")):
        part = datasets.CelebA(tmp_path, split=split, target_type="attr", download=False)
        assert list(part.filename) == index.split(("train", "val", "test")[code])[0].tolist()


@pytest.mark.parametrize("preset", sorted(ATTRIBUTE_PRESETS))
def test_attribute_presets_yaml(preset: str) -> None:
    path = Path(CONFIG_DIR) / "attributes" / f"{preset}.yaml"
    text = path.read_text()
    assert text.startswith("# @package data\n")
    loaded = OmegaConf.to_container(OmegaConf.load(path))
    assert loaded == {"attributes": list(ATTRIBUTE_PRESETS[preset])}


@pytest.mark.slow
def test_full_size_attribute_file_parses_fast(tmp_path: Path) -> None:
    rows = 202_599
    values = np.random.default_rng(0).choice([-1, 1], size=(rows, 40))
    cells = np.where(values == 1, " 1", "-1").astype(object)
    body = "\r\n".join(
        f"{i:06d}.jpg " + " ".join(row) for i, row in enumerate(cells.tolist(), start=1)
    )
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text(f"{rows}\r\n{' '.join(CELEBA_ATTRIBUTES)} \r\n{body}\r\n")
    start = time.perf_counter()
    frame = read_attribute_file(path)
    seconds = time.perf_counter() - start
    assert frame.shape == (rows, 40)
    np.testing.assert_array_equal(frame.to_numpy(), (values + 1) / 2)
    assert seconds < 5, f"parsing {rows} rows took {seconds:.1f} s"
