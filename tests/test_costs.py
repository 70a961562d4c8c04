"""The pre-flight check's wall-time estimate (stages/costs.py) from measured per-step / per-image costs."""
import pytest

from stages.config import load_config, merge
from stages.costs import stage_seconds, wall_time_lines


def test_the_demo_estimate_gives_back_the_measured_run():
    cfg = load_config("demo", [("device", "cpu")])
    # the README's run: 930 steps (500 images / 16 x 30 epochs) in 100.1 s, 650 CAMs in 31.5 s
    assert stage_seconds(cfg, cfg, "train-cam", 500) == pytest.approx(100.1)
    assert stage_seconds(cfg, cfg, "make-cam", 650) == pytest.approx(31.5)
    eader = merge(cfg, {"eader": {"enabled": True}})
    assert stage_seconds(cfg, eader, "train-cam", 500) == pytest.approx(279.4, abs=0.5)  # EADER's own run
    fewer = merge(cfg, {"crf": {"workers": 1}})
    assert stage_seconds(cfg, fewer, "make-crf", 500) == pytest.approx(34.8)  # measured with 2 workers


def test_voc_on_cuda_follows_bf16_and_unmeasured_settings_say_so():
    cfg = load_config("voc", [("device", "cuda")])
    fp32 = stage_seconds(cfg, cfg, "train-cam", 10582)
    assert fp32 == pytest.approx(10582 // 16 * 15 * 0.175)  # docs/gpu.md, one H200
    bf16 = merge(cfg, {"cam_train": {"bf16": True}, "aff_train": {"bf16": True}})
    assert stage_seconds(cfg, bf16, "train-cam", 10582) == pytest.approx(10582 // 16 * 15 * 0.088)
    assert stage_seconds(cfg, cfg, "train-aff", 10582) == pytest.approx(10582 // 8 * 8 * 0.121)
    assert stage_seconds(cfg, bf16, "train-aff", 10582) is None  # bf16 AffinityNet not measured on a GPU
    plan = [(cfg, "train-cam", None), (bf16, "train-aff", None), (cfg, "eval-cam", None)]
    rows = [("baseline", n, 10582, 0) for _, n, _ in plan]
    lines = wall_time_lines(cfg, plan, rows)
    assert "train-cam" in lines[1] and "not measured: baseline train-aff" in lines[-1] and "eval-cam" not in lines[-1]
    cpu = load_config("voc", [("device", "cpu")])
    assert "no measured costs" in wall_time_lines(cpu, plan, rows)[0]
