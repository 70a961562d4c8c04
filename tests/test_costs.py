"""The pre-flight check's wall-time estimate (stages/costs.py) from measured per-step / per-image costs."""
import pytest

from stages.config import load_config, merge
from stages.costs import stage_seconds, wall_time_lines


def test_the_demo_estimate_gives_back_the_measured_run(native_bf16):  # measured with bf16 on AMX
    cfg = load_config("demo", [("device", "cpu")])
    # docs/performance.md's AMX run: 930 steps (500 images / 16 x 30 epochs) in 121 s, 650 CAMs in 36 s
    assert stage_seconds(cfg, cfg, "train-cam", 500) == pytest.approx(121)
    assert stage_seconds(cfg, cfg, "make-cam", 650) == pytest.approx(36)
    assert stage_seconds(cfg, cfg, "train-aff", 500) == pytest.approx(72)  # 8 epochs of 62 steps
    eader = merge(cfg, {"eader": {"enabled": True}})
    assert stage_seconds(cfg, eader, "train-cam", 500) == pytest.approx(330)  # EADER's own run
    fewer = merge(cfg, {"crf": {"workers": 1}})
    assert stage_seconds(cfg, fewer, "make-crf", 500) == pytest.approx(42)  # measured with 2 workers


def test_the_float32_estimate_gives_back_the_avx2_runs(monkeypatch):
    # docs/performance.md's runs on an AVX2-only CPU (float32): one process, then --jobs 2 (a thread each)
    from psa_baseline import hardware
    monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: False)
    cfg = load_config("demo", [("device", "cpu"), "cam_train.bf16=false", "seg_train.bf16=false"])
    eader = merge(cfg, {"eader": {"enabled": True}})
    assert stage_seconds(cfg, cfg, "train-cam", 500) == pytest.approx(497)
    assert stage_seconds(cfg, eader, "train-cam", 500) == pytest.approx(650)
    assert stage_seconds(cfg, cfg, "train-seg", 500) == pytest.approx(307)
    assert stage_seconds(cfg, cfg, "make-crf", 500) == pytest.approx(27.3)  # no network: the CPU kind decides
    monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: True)
    assert stage_seconds(cfg, cfg, "make-crf", 500) == pytest.approx(21)  # the AMX run's
    assert stage_seconds(cfg, eader, "train-cam", 500, side_by_side=True) == pytest.approx(1247.9)
    assert stage_seconds(cfg, cfg, "train-seg", 500, side_by_side=True) == pytest.approx(561.1)


def test_side_by_side_the_longest_variant_sets_the_wall_time(native_bf16):
    cfg = load_config("demo", [("device", "cpu")])
    eader = merge(cfg, {"eader": {"enabled": True}})
    plan = [(cfg, "train-cam", None), (cfg, "train-seg", None), (eader, "train-cam", None), (eader, "train-seg", None)]
    rows = [("baseline", "train-cam", 500, 0), ("baseline", "train-seg", 500, 0),
            ("eader", "train-cam", 500, 0), ("eader", "train-seg", 500, 0)]
    one = wall_time_lines(cfg, plan, rows)
    assert "one process" in one[0] and one[-1].strip() == "total 12 min"  # 121 + 149 + 330 + 149 s
    # docs/performance.md, --jobs 2: EADER's train-cam 427.9 s, train-seg 229.8 s (the baseline's per-step cost)
    two = wall_time_lines(cfg, plan, rows, jobs=2)
    assert "side by side" in two[0] and "total 11 min (the longest variant, eader; baseline 6 min, eader 11 min)" in two[-1]
    assert "  eader      train-cam       7 min" in two
    gpu = load_config("voc", [("device", "cuda")])
    assert "upper bound" in wall_time_lines(gpu, plan, rows, jobs=2)[0]  # side by side not measured there


def test_voc_on_cuda_follows_bf16_and_unmeasured_settings_say_so():
    cfg = load_config("voc", [("device", "cuda")])
    fp32 = stage_seconds(cfg, cfg, "train-cam", 10582)
    assert fp32 == pytest.approx(10582 // 16 * 15 * 0.175)  # docs/notes/gpu.md, one H200
    bf16 = merge(cfg, {"cam_train": {"bf16": True}, "aff_train": {"bf16": True}})
    assert stage_seconds(cfg, bf16, "train-cam", 10582) == pytest.approx(10582 // 16 * 15 * 0.088)
    assert stage_seconds(cfg, cfg, "train-aff", 10582) == pytest.approx(10582 // 8 * 8 * 0.121)
    assert stage_seconds(cfg, bf16, "train-aff", 10582) is None  # bf16 AffinityNet not measured on a GPU
    plan = [(cfg, "train-cam", None), (bf16, "train-aff", None), (cfg, "eval-cam", None)]
    rows = [("baseline", n, 10582, 0) for _, n, _ in plan]
    lines = wall_time_lines(cfg, plan, rows)
    assert "train-cam" in lines[1] and "not measured: baseline train-aff" in lines[-1] and "eval-cam" not in lines[-1]
    assert "measured on one H200; an H100 took 10-50% longer" in lines[0]  # the machine behind the costs
    cpu = load_config("voc", [("device", "cpu")])
    assert "no measured costs" in wall_time_lines(cpu, plan, rows)[0]


def test_every_measured_setting_names_its_machine():
    from stages.costs import COSTS, MEASURED_BATCH, MEASURED_ON, SIDE_BY_SIDE_COSTS
    assert set(COSTS) | set(SIDE_BY_SIDE_COSTS) <= set(MEASURED_ON)
    # and every measured training cost its batch size, which stage_seconds scales by
    for key, stages in list(COSTS.items()) + list(SIDE_BY_SIDE_COSTS.items()):
        assert {"train-cam", "train-aff", "train-seg"} & set(stages) <= set(MEASURED_BATCH[key]), key


def test_deeplab_costs_hold_for_the_encoder_they_were_measured_with():
    cfg = load_config("voc", [("device", "cuda")])
    assert stage_seconds(cfg, cfg, "train-seg", 10582) == pytest.approx(30000 * 0.088)  # ResNet-101, one H200
    x = load_config("voc", [("device", "cuda"), "seg_train.encoder=xception65"])
    assert stage_seconds(x, x, "train-seg", 10582) is None and stage_seconds(x, x, "make-seg", 1449) is None
    plan = [(x, "train-cam", None), (x, "train-seg", None)]
    rows = [("baseline", n, 10582, 0) for _, n, _ in plan]
    assert "not measured: baseline train-seg" in wall_time_lines(x, plan, rows)[-1]


def test_a_training_stage_at_another_batch_size_costs_the_same_per_image(native_bf16):
    # a step is compute on its images: the demo's train-cam at batch 8 took the shipped run's time for twice the
    # steps (docs/notes/demo_v7.md section 32), so halving the batch must not double the estimate
    cfg = load_config("demo", [("device", "cpu")])
    half = merge(cfg, {"cam_train": {"batch_size": 8}, "aff_train": {"batch_size": 4}, "seg_train": {"batch_size": 4}})
    assert stage_seconds(cfg, half, "train-cam", 500) == pytest.approx(62 * 30 * 121 / 930 / 2)  # 1,860 steps
    assert stage_seconds(cfg, half, "train-aff", 500) == pytest.approx(125 * 8 * 72 / 496 / 2)  # 125 steps an epoch
    assert stage_seconds(cfg, half, "train-seg", 500) == pytest.approx(149 / 2)  # 500 iterations of 4 images
    gpu = load_config("voc", [("device", "cuda"), "seg_train.batch_size=8"])
    assert stage_seconds(gpu, gpu, "train-seg", 10582) == pytest.approx(30000 * 0.088 / 2)
