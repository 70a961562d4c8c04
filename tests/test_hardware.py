"""Precision and layout chosen by the CPU at hand (psa_baseline/hardware.py), and the known-bad kernel."""
import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from psa_baseline import hardware
from stages.config import BF16_KEYS, fingerprint, load_config


def fake_cpu(monkeypatch, instructions, onednn_avx512):
    monkeypatch.setattr(hardware, "cpu_bf16_instructions", lambda: instructions)
    monkeypatch.setattr(hardware, "onednn_avx512", lambda: onednn_avx512)
    monkeypatch.setattr(hardware, "_warned", set())


@pytest.mark.parametrize("instructions, onednn, native", [
    ("AMX", True, True), ("AVX512-BF16", True, True),
    (None, True, False),            # AVX-512 without bf16 instructions (Skylake-X): oneDNN emulates bf16
    (None, False, False),           # AVX2 only
    ("AVX512-BF16", False, False),  # bf16 instructions, but oneDNN capped below them (ONEDNN_MAX_CPU_ISA)
])
def test_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch, instructions, onednn, native):
    fake_cpu(monkeypatch, instructions, onednn)
    assert hardware.native_bf16("cpu") is native
    assert hardware.resolve_bf16("auto", "cpu") is native
    assert hardware.resolve_bf16(True, "cpu") is True and hardware.resolve_bf16(False, "cpu") is False
    cfg = load_config("demo")
    assert {k: cfg[k.split(".")[0]][k.split(".")[1]] for k in BF16_KEYS} == {
        "cam_train.bf16": native, "cam_infer.bf16": native, "aff_train.bf16": native, "seg_train.bf16": native,
        "adv_pretrain.bf16": False, "standalone.bf16": False}  # the last two are not auto in the demo


def test_auto_is_bf16_on_cuda(monkeypatch):
    fake_cpu(monkeypatch, None, False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.resolve_bf16("auto", "cuda") is True
    assert load_config("demo", [("device", "cuda")])["cam_train"]["bf16"] is True


def test_a_run_made_in_bf16_is_not_reused_as_float32(monkeypatch, tmp_path):
    """auto resolves before fingerprinting: the same config file on another CPU makes another stage
    fingerprint, and an explicit true matches an auto that resolved to true (the same computation)."""
    from stages import train_cam
    over = [("voc_root", str(tmp_path)), "net.weights=random"]

    def fp(*extra):
        cfg = load_config("demo", over + list(extra))
        return fingerprint("train_cam", *train_cam.depends(cfg))
    fake_cpu(monkeypatch, "AMX", True)
    on_amx = fp()
    assert on_amx == fp("cam_train.bf16=true")
    fake_cpu(monkeypatch, None, False)
    on_avx2 = fp()
    assert on_avx2 != on_amx and on_avx2 == fp("cam_train.bf16=false")


def test_explicit_true_on_an_emulating_cpu_warns_once(monkeypatch, caplog):
    fake_cpu(monkeypatch, None, False)
    with caplog.at_level(logging.WARNING, logger="psa_baseline.hardware"):
        load_config("demo", ["cam_train.bf16=true", "aff_train.bf16=false"])
        load_config("demo", ["cam_train.bf16=true"])
    warned = [r.getMessage() for r in caplog.records if "emulates bf16" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("cam_train.bf16=true"), warned
    caplog.clear()
    fake_cpu(monkeypatch, "AMX", True)
    with caplog.at_level(logging.WARNING, logger="psa_baseline.hardware"):
        load_config("demo", ["cam_train.bf16=true"])
    assert not caplog.records


def test_bf16_accepts_true_false_auto_only():
    from psa_baseline.errors import InputError
    with pytest.raises(InputError, match="cam_train.bf16.*true, false or auto"):
        load_config("demo", ["cam_train.bf16=fast"])
    with pytest.raises(InputError, match="expected true/false"):  # auto is for the bf16 switches only
        load_config("demo", ["cam_infer.flip=auto"])


def test_layout_by_device_and_precision(monkeypatch):
    """CPU float32 is NCHW whatever the CPU (the broken NHWC backward shows on AVX2 and AVX-512 kernels)."""
    for onednn in (False, True):
        fake_cpu(monkeypatch, None, onednn)
        assert hardware.memory_format("cpu", False) == torch.contiguous_format
        assert hardware.memory_format("cpu", True) == torch.channels_last
        assert hardware.memory_format("cuda", False) == torch.channels_last


# The minimal cases of the CPU conv bug (docs/performance.md): the backward of a 1x1 stride-2 conv with 4
# or 8 input channels, float32 channels_last, aborts or hangs. Each precision runs in the layout the project
# picks for it, in a subprocess with a time limit, so that a torch whose kernel breaks there fails this test
# by name instead of killing or hanging the suite.
KERNEL_CASE = """
import json, sys, torch
from psa_baseline import hardware
out = {}
for bf16 in (False, True):
    fmt = hardware.memory_format("cpu", bf16)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    for cin in (4, 8):
        for rep in range(3):
            torch.manual_seed(rep)
            conv = torch.nn.Conv2d(cin, 2 * cin, 1, stride=2, bias=False).to(memory_format=fmt)
            x = torch.randn(4, cin, 56, 48).contiguous(memory_format=fmt).requires_grad_()
            for _ in range(3):
                with amp:
                    y = conv(x).float().sum()
                y.backward()
            assert torch.isfinite(x.grad).all()
    out[str(bf16)] = fmt == torch.channels_last
print(json.dumps(out))
"""


@pytest.mark.parametrize("capped", [False, True], ids=["this-cpu", "onednn-capped-to-avx2"])
def test_the_known_bad_kernel_is_not_reached(capped):
    """capped: oneDNN limited to AVX2 as on an AVX2-only CPU (the case first seen failing)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if capped:
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    try:
        r = subprocess.run([sys.executable, "-c", KERNEL_CASE], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("a 1x1 stride-2 conv backward hung (over 120 s) in the layout hardware.memory_format picks: "
                    "torch's CPU kernel is broken there too; see docs/performance.md")
    assert r.returncode == 0, (f"a 1x1 stride-2 conv backward died (exit {r.returncode}) in the layout "
                               f"hardware.memory_format picks; see docs/performance.md\n{r.stderr[-2000:]}")
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"False": False, "True": True}


def test_check_shows_the_machine_and_the_resolved_precision(demo_root, tmp_path, monkeypatch):
    from conftest import tiny_cfg
    from stages.check import run_check
    from stages.costs import EMULATED_BF16_SLOWDOWN, stage_seconds
    fake_cpu(monkeypatch, None, False)  # AVX2-only: auto is float32
    lines = []
    run_check(tiny_cfg(demo_root, tmp_path / "w"), "off", "cam", out=lines.append)
    text = "\n".join(lines)
    assert "machine: CPU " in text and "capability" in text
    assert "precision on cpu: bf16 autocast for no stage, float32 elsewhere" in text
    lines.clear()
    forced = tiny_cfg(demo_root, tmp_path / "w", **{"cam_train.bf16": True})
    run_check(forced, "off", "cam", out=lines.append)
    text = "\n".join(lines)
    assert "bf16 autocast for cam_train.bf16," in text
    assert "note: cam_train.bf16 true on a CPU without native bf16: autocast emulates it" in text
    # the estimate of a forced-bf16 stage on such a CPU: float32's cost times the emulation factor
    fp32 = tiny_cfg(demo_root, tmp_path / "w", **{"cam_train.bf16": False})
    assert stage_seconds(fp32, fp32, "train-cam", 500) == pytest.approx(500 // 4 * 2 * 497 / 930 * 4 / 16)  # float32, per image
    assert stage_seconds(forced, forced, "train-cam", 500) == pytest.approx(
        EMULATED_BF16_SLOWDOWN * stage_seconds(fp32, fp32, "train-cam", 500))
