"""Where one demo train-cam step's time goes on this CPU: step time, FLOPs and torch.profiler's op table.

    .venv/bin/python -m scripts.profile_cam_step [--mode baseline|eader_loc|eader_adv] [--threads 2] [--rows 12]
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python -m scripts.profile_cam_step   # as an AVX2-only CPU

The step is train_cam.train_step on scripts.bench_eader's demo setting (random-init networks at the demo config's
widths, batch 16, crop 128, two labels per image), in the precision and layout the config resolves to here
(`cam_train.bf16: auto`; --set overrides config keys). It prints the median of --steps timed steps after a
warm-up, the forward + backward FLOPs of the localizer's step (torch's FlopCounterMode; EADER's adversary not
counted), the achieved FLOP/s, and the ops that took the most CPU time over --profile-steps steps, with the
convolutions' share. A step whose time is nearly all convolution at a FLOP rate near the CPU's has no
bookkeeping left to save: only less work makes it faster.
"""
import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from psa_baseline.training import autocast
from scripts.bench_eader import MODES, build
from stages.train_cam import train_step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=MODES, default="baseline")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="timed steps (median reported)")
    ap.add_argument("--profile-steps", type=int, default=4)
    ap.add_argument("--rows", type=int, default=12, help="ops shown, by self CPU time")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device("cpu")
    cfg, model, opt, eader, x, y, _, _ = build("demo", a.mode, 16, device, a.set)
    bf16 = cfg["cam_train"]["bf16"]
    amp = autocast(device, bf16)
    # the hook alternates turns every eader.phase_steps steps: pin the turn this mode measures
    turn = cfg["eader"]["phase_steps"] if a.mode == "eader_adv" else 0

    def step():
        if eader is not None:
            eader.step = turn
        return train_step(model, opt, eader, x, y, amp)

    with FlopCounterMode(display=False) as fc:
        with amp():
            out = model(x)
        torch.nn.functional.multilabel_soft_margin_loss(out.float(), y).backward()
    opt.zero_grad(set_to_none=True)
    flops = fc.get_total_flops()
    step()  # warm-up: kernel selection, allocator
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(a.profile_steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key)
    print(f"mode {a.mode}, {'bf16 autocast' if bf16 else 'float32'}, layout "
          f"{'NHWC' if x.is_contiguous(memory_format=torch.channels_last) else 'NCHW'}, {a.threads} threads, "
          f"capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"step {med:.3f} s (median of {a.steps}; min {min(times):.3f}, max {max(times):.3f})")
    print(f"localizer forward + backward {flops / 1e9:.1f} GFLOP: {flops / 1e9 / med:.0f} GFLOP/s over the "
          f"whole step")
    print(f"convolutions {100 * conv / total:.0f}% of the profiled CPU time")
    print(events.table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
