"""Train-cam step time of the demo network by precision and layout, on this CPU.

    .venv/bin/python -m scripts.bench_precision [--threads 2] [--steps 4]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python -m scripts.bench_precision   # as an AVX2-only CPU

Random-init WideResNet-38 at the demo's width (0.125), batch 16, crop 128: the best of --steps steps after
one warm-up, for float32 / bf16 autocast x NCHW / NHWC. Float32 NHWC is the CPU's broken backward kernel
on narrow layers (docs/performance.md) and is timed only with --unsafe, in a child process.
"""
import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent


def step_time(cl, bf16, steps, threads):
    from stages.builders import build_cam_net
    from stages.config import load_config
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = build_cam_net(load_config("demo", ["net.weights=random"])).train()
    fmt = torch.channels_last if cl else torch.contiguous_format
    net = net.to(memory_format=fmt)
    x = torch.randn(16, 3, 128, 128).contiguous(memory_format=fmt)
    y = (torch.rand(16, 20) < 0.1).float()
    opt = torch.optim.SGD(net.parameters(), lr=1e-4)
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        with amp():
            out = net(x)
        loss = F.multilabel_soft_margin_loss(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return min(times[1:])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--unsafe", action="store_true", help="also float32 NHWC (child process, 300 s limit)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        cl, bf16 = json.loads(a.one)
        print(json.dumps(step_time(cl, bf16, a.steps, a.threads)))
        return
    from psa_baseline.hardware import summary
    print(summary())
    for cl, bf16 in ((False, False), (True, False), (False, True), (True, True)):
        name = f"{'bf16 autocast' if bf16 else 'float32':>13} {'NHWC' if cl else 'NCHW'}"
        if cl and not bf16 and not a.unsafe:
            print(f"{name}: skipped (known-bad kernel; --unsafe times it)")
            continue
        try:
            r = subprocess.run([sys.executable, "-m", "scripts.bench_precision", "--one", json.dumps([cl, bf16]),
                                "--steps", str(a.steps), "--threads", str(a.threads)], cwd=ROOT, capture_output=True,
                               text=True, timeout=300)
            res = f"{json.loads(r.stdout.splitlines()[-1]):.3f} s/step" if r.returncode == 0 else f"died (exit {r.returncode})"
        except subprocess.TimeoutExpired:
            res = "hung (over 300 s)"
        print(f"{name}: {res}", flush=True)


if __name__ == "__main__":
    main()
