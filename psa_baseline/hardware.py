"""What the machine at hand can do well: bfloat16 and memory layout chosen by the CPU, not assumed.

On a CPU, bf16 autocast is fast only where the hardware has bf16 instructions (AMX, AVX512-BF16) and
oneDNN may use them; elsewhere (AVX2-only CPUs) oneDNN emulates bf16 and a step runs an order of
magnitude slower than float32. And the CPU's float32 convolution backward in channels_last corrupts the
heap or hangs on narrow shapes (a 1x1 stride-2 conv with 4 or 8 input channels, on AVX2 and on AVX-512
kernels alike; docs/performance.md), while NCHW float32 is as fast: so float32 stays NCHW on a CPU.
"""
import logging
import os
import platform

import torch

log = logging.getLogger(__name__)

AUTO = "auto"


def cpu_model():
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability():
    """torch's CPU kernel level (DEFAULT, AVX2, AVX512, ...); honours ATEN_CPU_CAPABILITY."""
    return torch.backends.cpu.get_cpu_capability()


def onednn_avx512():
    """Whether oneDNN may run AVX-512 kernels here: its bf16 check asks for avx512_core at least and
    honours ONEDNN_MAX_CPU_ISA, so a capped oneDNN counts as the CPU it is capped to."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_bf16_instructions():
    """'AMX', 'AVX512-BF16' or None: the CPU's own bf16 instructions, whatever oneDNN is allowed."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return None


def native_bf16_cpu():
    """bf16 autocast runs on real bf16 instructions: the CPU has them and oneDNN may use them."""
    return cpu_bf16_instructions() is not None and onednn_avx512()


def native_bf16(device):
    device = torch.device(device)
    if device.type == "cuda":
        # not asked of the driver when CUDA is missing: the stage stops on the device itself
        return not torch.cuda.is_available() or torch.cuda.is_bf16_supported()
    return native_bf16_cpu()


_warned = set()


def resolve_bf16(value, device, key="bf16"):
    """A config's bf16 value (true, false or 'auto') as a bool for `device`.

    auto: bf16 autocast on CUDA and on CPUs with native bf16, float32 elsewhere. An explicit true on a CPU
    that would emulate bf16 is kept (the user asked) with one warning per key and process."""
    if value == AUTO:
        return native_bf16(device)
    if value is True and torch.device(device).type == "cpu" and not native_bf16_cpu() and key not in _warned:
        _warned.add(key)
        log.warning("%s=true on a CPU without native bf16 (%s, capability %s): autocast emulates bf16 and "
                    "runs about 10-20x slower than float32; set %s=auto or false", key, cpu_model(),
                    cpu_capability(), key)
    return bool(value)


def channels_last_ok(device, bf16):
    """Whether NHWC is safe (and at least as fast) for a conv net on `device` at this precision.

    CUDA: always. CPU: only under bf16 autocast (faster there, and its kernels pass the known-bad shapes);
    float32 stays NCHW (the known-bad backward kernel; NCHW float32 is as fast)."""
    return torch.device(device).type == "cuda" or bool(bf16)


def memory_format(device, bf16):
    return torch.channels_last if channels_last_ok(device, bf16) else torch.contiguous_format


def describe():
    """One dict of what decides precision and layout here, for logs, run records and `check`."""
    return {"cpu": cpu_model(), "cpu_capability": cpu_capability(), "cpu_bf16": cpu_bf16_instructions(),
            "onednn_avx512": onednn_avx512(), "native_bf16_cpu": native_bf16_cpu(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}


def summary():
    d = describe()
    return (f"CPU {d['cpu']}, torch {d['torch']} capability {d['cpu_capability']}, bf16 instructions "
            f"{d['cpu_bf16'] or 'none'}, native bf16 {'yes' if d['native_bf16_cpu'] else 'no (emulated)'}, "
            f"{d['threads']} threads")
