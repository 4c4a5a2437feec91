"""Backbone factory (torchvision by name, weights, freezing, depth) and task heads."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn

from mtl_celeba.errors import ConfigError
from mtl_celeba.models import backbones
from mtl_celeba.models.backbones import Backbone, build_backbone
from mtl_celeba.models.heads import TaskHead, build_heads


@pytest.fixture(scope="module")
def vgg16() -> Backbone:
    return build_backbone("vgg16")


def images(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def trainable(backbone: Backbone) -> list[str]:
    return [name for name, p in backbone.named_parameters() if p.requires_grad]


def batchnorms(backbone: Backbone, prefix: str = "") -> list[nn.Module]:
    return [
        module
        for name, module in backbone.model.named_modules()
        if isinstance(module, nn.BatchNorm2d) and name.startswith(prefix)
    ]


# ------------------------------------------------------------------ features and depth
def test_resnet18_features_and_depth() -> None:
    backbone = build_backbone("resnet18")
    assert backbone.out_features == 512
    assert backbone(images()).shape == (2, 512)
    # 17 = conv1 + 8 basic blocks x 2 convs; the three 1x1 downsample convs are shortcuts.
    assert backbone.depth == 17
    assert not any(isinstance(m, nn.Linear) for m in backbone.modules())


def test_vgg16_drops_the_whole_classifier_and_pools(vgg16: Backbone) -> None:
    assert vgg16.out_features == 512
    assert vgg16(images()).shape == (2, 512)
    assert vgg16(images(48)).shape == (2, 512)
    assert vgg16.depth == 13
    assert not any(isinstance(m, nn.Linear) for m in vgg16.modules())
    # Only the 13 convs' 14.7M parameters remain, not the 124M of the fully connected layers.
    assert sum(p.numel() for p in vgg16.parameters()) == 14_714_688


@pytest.mark.parametrize(
    ("name", "out_features"),
    [
        ("mobilenet_v3_small", 1024),  # the pre-logits Linear(576, 1024) stays
        pytest.param("efficientnet_b0", 1280, marks=pytest.mark.slow),
        ("squeezenet1_1", 512),  # its classifier is a conv: pooled like VGG
        pytest.param("googlenet", 1024, marks=pytest.mark.slow),  # aux classifiers removed
    ],
)
def test_other_families(name: str, out_features: int) -> None:
    backbone = build_backbone(name).train()
    features = backbone(images())
    assert isinstance(features, torch.Tensor)
    assert features.shape == (2, out_features)
    assert backbone.out_features == out_features


@pytest.mark.parametrize(("name", "depth"), [("resnet50", 49), ("densenet121", 120)])
def test_depth_is_the_longest_path(name: str, depth: int) -> None:
    assert build_backbone(name).depth == depth


def test_depth_falls_back_to_counting_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    def untraceable(model: nn.Module) -> None:
        raise TypeError("not traceable")

    monkeypatch.setattr(backbones.fx, "symbolic_trace", untraceable)
    # resnet18 has 20 convs in all: the 17 on the longest path and 3 downsample shortcuts.
    assert build_backbone("resnet18").depth == 20


def test_channels_last_and_autocast() -> None:
    backbone = build_backbone("resnet18").eval()
    x = images()
    with torch.no_grad():
        reference = backbone(x)
        backbone.to(memory_format=torch.channels_last)
        channels_last = backbone(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = backbone(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-4)
    assert mixed.dtype == torch.bfloat16
    assert mixed.shape == (2, 512)


def test_unknown_backbone_names_the_key_and_suggests() -> None:
    with pytest.raises(ConfigError, match=r"model\.backbone=resnt18.*resnet18"):
        build_backbone("resnt18")
    with pytest.raises(ConfigError, match=r"model\.backbone"):
        build_backbone("fasterrcnn_resnet50_fpn")  # a torchvision model, but not a classifier


# ---------------------------------------------------------------------------- freezing
def test_freeze_all_is_a_linear_probe() -> None:
    backbone = build_backbone("resnet18", freeze="all").train()
    assert trainable(backbone) == []
    before = [bn.running_mean.clone() for bn in batchnorms(backbone)]
    backbone(images())
    after = [bn.running_mean for bn in batchnorms(backbone)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert backbone.training and not any(bn.training for bn in batchnorms(backbone))


def test_freeze_all_but_the_last_block() -> None:
    backbone = build_backbone("resnet18", freeze=1).train()
    names = trainable(backbone)
    assert names and all(name.startswith("model.layer4.") for name in names)
    assert len(names) == sum(1 for _ in backbone.model.layer4.parameters())
    assert all(bn.training for bn in batchnorms(backbone, "layer4"))
    assert not any(bn.training for bn in batchnorms(backbone, "layer3"))


def test_freeze_counts_blocks_from_the_top() -> None:
    backbone = build_backbone("resnet18", freeze="2")
    assert [block.modules for block in backbone.blocks] == [
        ("conv1", "bn1"),
        ("layer1",),
        ("layer2",),
        ("layer3",),
        ("layer4",),
    ]
    assert {name.split(".")[1] for name in trainable(backbone)} == {"layer3", "layer4"}
    backbone.freeze(None)  # unfreezing gives everything back, BatchNorm included
    backbone.train()
    assert len(trainable(backbone)) == len(list(backbone.parameters()))
    assert all(bn.training for bn in batchnorms(backbone))


def test_freeze_vgg16_counts_conv_layers(vgg16: Backbone) -> None:
    assert len(vgg16.blocks) == 13
    try:
        vgg16.freeze(1)
        assert trainable(vgg16) == ["model.features.28.weight", "model.features.28.bias"]
    finally:
        vgg16.freeze(None)


def test_vit_depth_and_loose_parameters() -> None:
    backbone = build_backbone("vit_b_16", freeze="all")
    assert backbone.depth == 49  # patch-embedding conv + 12 x (attention 2 + MLP 2)
    assert backbone.out_features == 768
    assert trainable(backbone) == []
    assert backbone.blocks[0].parameters == ("class_token", "encoder.pos_embedding")


@pytest.mark.parametrize("freeze", [None, "none", "None"])
def test_freeze_none_trains_everything(freeze: str | None) -> None:
    backbone = build_backbone("resnet18", freeze=freeze)
    assert len(trainable(backbone)) == len(list(backbone.parameters()))


@pytest.mark.parametrize("freeze", ["some", -1, 6, 1.5, True])
def test_bad_freeze_names_the_key(freeze: object) -> None:
    with pytest.raises(ConfigError, match=r"model\.freeze"):
        build_backbone("resnet18", freeze=freeze)


# ----------------------------------------------------------------------------- weights
def seeded_resnet18() -> nn.Module:
    torch.manual_seed(123)
    return torchvision.models.resnet18()


def test_weights_from_a_torchvision_state_dict(tmp_path: Path) -> None:
    source = seeded_resnet18()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone("resnet18", weights=str(path))
    torch.testing.assert_close(backbone.model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    torch.testing.assert_close(backbone.model.bn1.running_var, source.bn1.running_var)
    assert not torch.equal(build_backbone("resnet18").model.conv1.weight, source.conv1.weight)


def test_weights_from_an_old_file_without_num_batches_tracked(tmp_path: Path) -> None:
    source = seeded_resnet18()
    path = tmp_path / "resnet18-5c106cde.pth"
    old = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(old, path)
    backbone = build_backbone("resnet18", weights=str(path))
    torch.testing.assert_close(backbone.model.conv1.weight, source.conv1.weight)


def test_weights_from_a_backbone_state_dict(tmp_path: Path) -> None:
    source = build_backbone("resnet18")
    path = tmp_path / "backbone.pt"
    torch.save(source.state_dict(), path)
    loaded = build_backbone("resnet18", weights=str(path))
    torch.testing.assert_close(loaded.model.conv1.weight, source.model.conv1.weight)


def test_weights_from_a_multitask_state_dict(tmp_path: Path) -> None:
    source = build_backbone("resnet18")
    state = {f"backbone.{key}": value for key, value in source.state_dict().items()}
    state["heads.Smiling.layers.0.weight"] = torch.zeros(1, 512)
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "state_dict": state}, path)
    loaded = build_backbone("resnet18", weights=str(path))
    torch.testing.assert_close(
        loaded.model.layer1[0].conv1.weight, source.model.layer1[0].conv1.weight
    )


def test_weights_for_another_model_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mobilenet_v3_small-047dcff4.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    with pytest.raises(ConfigError, match=r"model\.weights=.*missing.*suggests mobilenet_v3_small"):
        build_backbone("resnet18", weights=str(path))


def test_weights_file_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"model\.weights=.*could not be read"):
        build_backbone("resnet18", weights=str(path))


def test_missing_weights_file() -> None:
    with pytest.raises(ConfigError, match=r"model\.weights=/no/such/resnet18\.pth does not exist"):
        build_backbone("resnet18", weights="/no/such/resnet18.pth")


def test_weights_name_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))  # an empty cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(
        ConfigError, match=r"offline.*model\.weights=/path/to/resnet18-f37072fd\.pth"
    ):
        build_backbone("resnet18", weights="IMAGENET1K_V1")


def test_unknown_weights_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"model\.weights=IMAGENET22K.*IMAGENET1K_V1.*DEFAULT"):
        build_backbone("resnet18", weights="IMAGENET22K")


# ------------------------------------------------------------------------------- heads
def test_head_output_and_depth() -> None:
    features = torch.randn(4, 32)
    for hidden in [(), (16,), (16, 8)]:
        head = TaskHead(32, hidden)
        assert head(features).shape == (4,)
        assert head.depth == len(hidden) + 1
        assert sum(isinstance(m, nn.Linear) for m in head.modules()) == head.depth


def test_build_heads_with_per_task_overrides() -> None:
    heads = build_heads(
        ["Smiling", "Bald", "Young"],
        32,
        hidden=[16],
        dropout=0.1,
        overrides={"Bald": {"hidden": [64, 32, 16]}, "Young": {"hidden": [], "dropout": 0.0}},
    )
    assert heads.tasks == ["Smiling", "Bald", "Young"]
    assert heads.depths == {"Smiling": 2, "Bald": 4, "Young": 1}
    assert heads(torch.randn(3, 32)).shape == (3, 3)
    shapes = {
        tuple(names): (g.hidden, g.dropout)
        for names, g in zip(heads.group_tasks, heads.groups, strict=True)
    }
    assert shapes == {
        ("Smiling",): ([16], 0.1),
        ("Bald",): ([64, 32, 16], 0.1),
        ("Young",): ([], 0.0),
    }


def test_build_heads_accepts_hydra_containers() -> None:
    overrides = OmegaConf.create({"Bald": {"hidden": [8]}})
    heads = build_heads(
        OmegaConf.create(["Smiling", "Bald"]), 32, OmegaConf.create([4, 4]), 0.0, overrides
    )
    assert heads.depths == {"Smiling": 3, "Bald": 2}


@pytest.mark.parametrize("hidden", [(), (16,)])
def test_head_dropout_is_applied_in_training_only(hidden: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    head = TaskHead(32, hidden, dropout=0.5)
    features = torch.randn(8, 32)
    head.train()
    assert not torch.equal(head(features), head(features))
    head.eval()
    assert torch.equal(head(features), head(features))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"overrides": {"Smilling": {"hidden": [8]}}}, r"model\.head_overrides.*Smiling"),
        ({"overrides": {"Smiling": {"width": 8}}}, r"model\.head_overrides\.Smiling.*width"),
        ({"overrides": {"Smiling": {"dropout": 1.5}}}, r"model\.head_overrides\.Smiling\.dropout"),
        ({"hidden": [0]}, r"model\.head_hidden"),
        ({"hidden": "128"}, r"model\.head_hidden"),
        ({"dropout": -0.1}, r"model\.head_dropout"),
    ],
)
def test_bad_head_settings_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build_heads(["Smiling", "Bald"], 32, **kwargs)
