"""mtl-bench: the window arithmetic, the timer callback, option checks, and one tiny real run."""

import functools
import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mtl_celeba.bench import throughput as benchmark
from mtl_celeba.bench.__main__ import main
from mtl_celeba.bench.throughput import (
    VARIANTS,
    WindowTimer,
    median_throughput,
    ratios,
    window_throughputs,
)
from mtl_celeba.models.optim import build_optimizer, fused_kwargs


def test_window_throughputs_and_median():
    times = [10.0, 12.0, 13.0, 17.0]
    images = [100, 100, 100]
    assert window_throughputs(times, images) == [50.0, 100.0, 25.0]
    assert median_throughput(times, images) == 50.0
    # a window disturbed by other work does not move the median
    assert median_throughput([0.0, 1.0, 2.0, 30.0, 31.0], [64, 64, 64, 64]) == 64.0
    with pytest.raises(ValueError, match="3 windows need 4 edge times"):
        window_throughputs([0.0, 1.0, 2.0], images)
    assert benchmark.window_spread([50.0, 100.0, 25.0]) == 4.0


def test_ratios_follow_from_the_throughputs():
    result = ratios(
        {
            "plain": 300.0,
            "model_only": 200.0,
            "fast": 180.0,
            "naive": 60.0,
            "mtl": 100.0,
            "dst": 80.0,
        }
    )
    assert result["fast_over_plain"] == pytest.approx(0.6)
    assert result["fast_over_model_only"] == pytest.approx(0.9)
    assert result["fast_over_naive"] == pytest.approx(3.0)
    # step time 1/80 against 1/100: 25% longer
    assert result["dst_overhead"] == pytest.approx(0.25)


def test_window_timer_records_window_edges(monkeypatch):
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(clock))
    synced = []
    timer = WindowTimer(
        warmup_steps=2, window_steps=3, windows=2, synchronize=lambda: synced.append(1)
    )
    timer.on_fit_start(None, None)  # clock 0
    sizes = [16, 16, 16, 16, 8, 16, 16, 16]  # a short last batch of an epoch inside window 1
    for index, size in enumerate(sizes):
        batch = (None, torch.zeros(size, 3), None)
        timer.on_train_batch_end(None, None, None, batch, index)
    # step 1 reads the clock for first_step_s, then the edges after steps 2, 5 and 8
    assert timer.first_step_s == 1.0
    assert timer.times == [2.0, 3.0, 4.0]
    assert timer.images == [16 + 16 + 8, 16 + 16 + 16]
    assert len(synced) == 4


@pytest.mark.filterwarnings("ignore:called a synchronizing")
def test_sync_counter_counts_warm_up_syncs_by_site():
    modes = []
    counter = benchmark.SyncCounter(warmup_steps=3, set_mode=modes.append)
    batch = (None, torch.zeros(4), None)

    def step(syncs: int) -> None:
        for _ in range(syncs):
            warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        counter.on_train_batch_end(None, None, None, batch, 0)

    step(5)  # step 1 (compilation, autotuning) is not counted
    step(2)
    step(2)
    step(7)  # after the warm-up: not counted
    assert modes == ["warn", "default"]
    assert counter.counted_steps == 2 and counter.per_step == 2.0
    [(site, count)] = counter.sites.items()
    assert site.startswith(__file__) and count == 4


def test_bad_options_end_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--windows", "0"])
    assert exit_info.value.code == 2
    assert "--windows is 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data-source", "celeba"])
    assert "--data-root" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--backbones", "resnet81"])
    assert "resnet18" in capsys.readouterr().err  # suggested


def tiny_bench_args(synthetic_root: Path, tmp_path: Path, out: Path, *extra: str) -> list[str]:
    """mtl-bench arguments for a seconds-long run on the tiny synthetic CelebA, plus ``extra``
    (options may follow the Hydra overrides: argparse takes them wherever they stand)."""
    return [
        "--backbones=resnet18",
        "--image-size=32",
        "--batch-size=16",
        "--windows=2",
        "--window-steps=2",
        "--warmup-steps=1",
        "--workers=0",
        f"--data-root={synthetic_root}",
        "--num-images=400",
        f"--out={out}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.cache_workers=1",
        "model.head_hidden=[16]",
        *extra,
    ]


def test_unknown_strategies_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--strategies", "pcgrad,pcgard"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--strategies names pcgard" in error and "famo" in error


def test_strategy_list_puts_mtl_first():
    assert benchmark._strategy_list("famo, dst,famo") == ["mtl", "famo", "dst"]
    assert benchmark._strategy_list("") == []


@pytest.mark.slow
def test_bench_times_strategies_relative_to_mtl(synthetic_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "bench.json"
    main(
        tiny_bench_args(
            synthetic_root, tmp_path, out, "--variants=fast", "--strategies=pcgrad,famo"
        )
    )
    assert "step time vs MTL" in capsys.readouterr().out
    strategies = json.loads(out.read_text())["backbones"]["resnet18"]["strategies"]
    # a gradient method is timed on both gradient kinds, a loss weighting once
    assert list(strategies) == ["mtl", "pcgrad", "pcgrad:parameters", "famo"]
    assert [strategies[name]["gradients"] for name in strategies] == [
        None, "features", "parameters", None
    ]  # fmt: skip
    mtl = strategies["mtl"]["images_per_s"]
    assert strategies["mtl"]["step_time_vs_mtl"] == pytest.approx(1.0)
    for name in ("pcgrad", "pcgrad:parameters", "famo"):
        entry = strategies[name]
        assert entry["images_per_s"] > 0
        assert entry["step_time_vs_mtl"] == pytest.approx(mtl / entry["images_per_s"])


def test_device_name_names_the_cpu():
    assert benchmark.device_name(cuda=False).endswith(" cores")


@pytest.mark.slow
def test_bench_runs_end_to_end(synthetic_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "bench" / "bench.json"
    main(tiny_bench_args(synthetic_root, tmp_path, out, "++strategy.measurement_batches=2"))
    printed = capsys.readouterr().out
    assert "fast/plain" in printed and str(out) in printed

    bench = json.loads(out.read_text())
    assert bench["accelerator"] == "cpu" and bench["device"]
    assert bench["settings"]["image_size"] == 32 and bench["settings"]["windows"] == 2
    entry = bench["backbones"]["resnet18"]
    throughput = entry["images_per_s"]
    assert set(throughput) == set(VARIANTS)
    for variant in VARIANTS:
        assert math.isfinite(throughput[variant]) and throughput[variant] > 0
        windows = entry["window_images_per_s"][variant]
        assert len(windows) == 2 and throughput[variant] == pytest.approx(sum(windows) / 2)
        assert benchmark.VARIANT_LABELS[variant] in printed  # a progress line per run
    assert entry["fast_over_plain"] == pytest.approx(throughput["fast"] / throughput["plain"])
    assert entry["fast_over_model_only"] == pytest.approx(
        throughput["fast"] / throughput["model_only"]
    )
    assert entry["fast_over_naive"] == pytest.approx(throughput["fast"] / throughput["naive"])
    assert entry["dst_overhead"] == pytest.approx(throughput["mtl"] / throughput["dst"] - 1)
    hooks = entry["dst_callback_ms"]
    assert hooks["setup"] > 0 and hooks["per_epoch"] > 0 and hooks["per_step"] >= 0
    assert set(entry["window_spread"]) == set(VARIANTS)
    assert entry["fast_syncs_per_step"] is None  # counted on CUDA only
    assert list(tmp_path.glob("bench/.bench.json.*")) == []  # written atomically


def test_model_only_batch_stays_on_the_device_and_repeats():
    batch = (torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, 2), torch.ones(4, 2))
    repeated = benchmark.RepeatedBatch(batch, 3)
    assert len(repeated) == 3
    assert [item is batch for item in repeated] == [True, True, True]


def test_plain_heads_are_per_task_mlps():
    """The plain loop's stacked heads: task t's logit depends only on task t's weights."""
    torch.manual_seed(0)
    heads = benchmark.PlainHeads(16, 3, [8])
    features = torch.randn(5, 16)
    logits = heads(features)
    assert logits.shape == (5, 3)
    hidden = torch.relu(heads.first(features)).view(5, 3, 8)
    expected = (hidden * heads.weights[0].squeeze(1)).sum(-1) + heads.biases[0].squeeze(1)
    torch.testing.assert_close(logits, expected)
    assert benchmark.PlainHeads(16, 3, [])(features).shape == (5, 3)


def test_optimizers_are_fused_on_cuda_only():
    adam = functools.partial(torch.optim.Adam, lr=0.1)
    assert fused_kwargs(adam, cuda=True) == {"fused": True}
    assert fused_kwargs(torch.optim.AdamW, cuda=True) == {"fused": True}
    assert fused_kwargs(adam, cuda=False) == {}
    assert fused_kwargs(functools.partial(torch.optim.SGD, lr=0.1), cuda=True) == {}
    # a config that sets fused itself keeps its choice
    assert fused_kwargs(functools.partial(torch.optim.Adam, fused=False), cuda=True) == {}
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(build_optimizer(adam, params, cuda=False), torch.optim.Adam)


def test_unsupported_precision_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--precision", "bf16-true"])
    assert exit_info.value.code == 2
    assert "--precision" in capsys.readouterr().err


def compose_settings(*overrides: str) -> SimpleNamespace:
    """The settings compose_run reads, for a tiny synthetic run with ``overrides``."""
    return SimpleNamespace(
        accelerator="cpu",
        precision="32-true",
        data_source="synthetic",
        data_root=None,
        num_images=400,
        image_size=32,
        batch_size=16,
        workers=0,
        compile=False,
        overrides=list(overrides),
    )


def test_unknown_override_is_a_config_error():
    settings = compose_settings("data.no_such_key=1")
    with pytest.raises(benchmark.ConfigError, match="no_such_key"):
        benchmark.compose_run(settings, "resnet18", "fast")


def test_device_cache_override_spares_the_naive_variant():
    settings = compose_settings("data.device_cache=true")
    assert benchmark.compose_run(settings, "resnet18", "fast").data.device_cache is True
    naive = benchmark.compose_run(settings, "resnet18", "naive").data
    assert naive.pipeline == "naive" and naive.device_cache is False


def test_some_variants_give_the_ratios_they_can():
    result = ratios({"plain": 100.0, "model_only": 95.0, "fast": 90.0})
    assert result == pytest.approx({"fast_over_plain": 0.9, "fast_over_model_only": 90 / 95})
    entry = {
        "images_per_s": {"plain": 100.0, "fast": 90.0},
        **ratios({"plain": 100.0, "fast": 90.0}),
    }
    table = benchmark.results_table({"resnet18": entry})
    assert "| naive" not in table.splitlines()[0] and "| 0.90 " in table
    with pytest.raises(SystemExit) as exit_info:
        main(["--variants", "plain,ceiling"])
    assert exit_info.value.code == 2
