"""Which CPU convolution backward cases abort or hang: 1x1 convs by input channels, stride, precision, layout.

    .venv/bin/python -m scripts.probe_conv_kernel [--tries 3]
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python -m scripts.probe_conv_kernel   # oneDNN as on an AVX2-only CPU

Each case (conv cin -> 2*cin, 1x1, batch 4, 56x48 input, three forward/backward passes) runs in its own
process with a 20 s limit, --tries times; prints the cases that failed (docs/performance.md).
"""
import argparse
import itertools
import json
import subprocess
import sys

CASE = """
import json, sys, torch
cin, stride, bf16, cl = json.loads(sys.argv[1])
fmt = torch.channels_last if cl else torch.contiguous_format
conv = torch.nn.Conv2d(cin, 2 * cin, 1, stride=stride, bias=False).to(memory_format=fmt)
x = torch.randn(4, cin, 56, 48).contiguous(memory_format=fmt).requires_grad_()
for _ in range(3):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = conv(x).float().sum()
    y.backward()
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tries", type=int, default=3)
    p.add_argument("--channels", default="4,8,12,16,32")
    a = p.parse_args()
    import torch
    print(f"torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}")
    chans = [int(c) for c in a.channels.split(",")]
    for cin, stride, bf16, cl in itertools.product(chans, (1, 2), (False, True), (False, True)):
        bad = 0
        for _ in range(a.tries):
            try:
                r = subprocess.run([sys.executable, "-c", CASE, json.dumps([cin, stride, bf16, cl])],
                                   capture_output=True, timeout=20)
                bad += r.returncode != 0
            except subprocess.TimeoutExpired:
                bad += 1
        print(f"cin {cin:>2} stride {stride} {'bf16' if bf16 else 'fp32'} {'NHWC' if cl else 'NCHW'}: "
              f"{'FAILED ' + str(bad) + '/' + str(a.tries) if bad else 'ok'}", flush=True)


if __name__ == "__main__":
    main()
