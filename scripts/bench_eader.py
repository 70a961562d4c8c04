"""Cost of EADER: time per training step and peak memory, baseline vs EADER (both turns), per setting/dtype.

Settings (networks at random init; weights do not change the cost):
  demo             configs/demo.yaml's CAM stage: narrow WideResNet-38 (width 0.125), its crop and batch,
                   its EADER adversary (eader.adv_width)
  full             the paper's networks: full WideResNet-38 (frozen BN and stem, as trained) + full ResNet-18
                   adversary, one 448x448 batch of --batch images
  standalone-demo  configs/demo.yaml's standalone localizer (narrow ResNet-18, Grad-CAM) + its adversary
  standalone-full  torchvision ResNet-101 localizer (Grad-CAM on layer4) + ResNet-18 at 448x448
Modes: baseline (plain classifier step), eader_loc (EADER's localizer turn: L_loc + alpha L_am + beta L_reg,
adversary frozen), eader_adv (EADER's adversary turn: localizer forward without grad + one adversary update).
Every step is train_cam.train_step, the training loop's own step function. Each image has 2 labels, so
the adversary sees 2 x batch erased images.

Per (setting, dtype) there are four fresh subprocesses:
- timing: one process runs the three modes (and the adversary's work alone, see below) round-robin, one
  warm-up round then --rounds timed rounds, order rotated each round: a busy shared machine slows all
  modes alike, so the EADER/baseline ratios hold even when absolute times wander. Medians are reported.
- memory, one per mode: peak memory is that process's ru_maxrss after a warm-up and one step (CPU;
  tracemalloc does not see torch's allocator) or torch.cuda.max_memory_allocated on GPU. "static" is the
  maxrss after building networks, optimisers and the input batch, before the first step.
The timing process also counts forward passes of the localizer body and the adversary per step and times
the adversary's own work alone (localizer turn: adversary forward + backward to its input, parameters
frozen; adversary turn: forward + backward + SGD step), to check that EADER's extra cost is that work
and nothing else (in particular no second localizer forward in the localizer turn).

    .venv/bin/python -m scripts.bench_eader --settings demo full --dtypes fp32 bf16 --batch 1 \\
        --rounds 3 --threads 1 --out work/bench_eader
"""
import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = ("demo", "full", "standalone-demo", "standalone-full")
MODES = ("baseline", "eader_loc", "eader_adv")


def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build(setting, mode, batch, device, overrides=()):
    """(cfg, model, opt, eader, x, y, body, labelled) for one measurement; overrides: key=value strings."""
    import torch
    from stages.config import load_config, merge
    from stages.train_cam import build_eader
    standalone = setting.startswith("standalone")
    cfg = load_config("demo" if setting.endswith("demo") else "voc", [("device", str(device)), *overrides])
    cfg = merge(cfg, {"eader": {"enabled": mode != "baseline"}})
    if standalone:
        from stages.train_standalone import GradCamModel, build_localizer, eader_cfg
        cfg = eader_cfg(cfg)
        s = cfg["standalone"]
        model = GradCamModel(build_localizer(cfg, pretrained=False),
                             s["gradcam_create_graph"]).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"],
                              weight_decay=s["weight_decay"])
        crop, bs, body = s["crop"], s["batch_size"], model.loc.net.layer4
        labelled = model.labelled
    else:
        from psa_baseline.hardware import memory_format
        from psa_baseline.training import PolyOptimizer
        from stages.builders import build_cam_net
        t = cfg["cam_train"]
        # net and input in the layout train-cam picks (psa_baseline.hardware.memory_format)
        fmt = memory_format(device, t["bf16"])
        model = build_cam_net(cfg, pretrained=False).to(device, memory_format=fmt)
        opt = PolyOptimizer(model.param_groups(), t["lr"], t["weight_decay"], 10 ** 6,
                            momentum=t["momentum"], momentum_quirk=t["momentum_quirk"], power=t["poly_power"])
        crop, bs, body = t["crop"], t["batch_size"], model.backbone
        labelled = lambda y: contextlib.nullcontext()  # noqa: E731
    if not setting.endswith("demo"):
        crop, bs = 448, batch
    eader = build_eader(cfg, device)
    model.train()
    x = torch.randn(bs, 3, crop, crop, device=device)
    if not standalone:
        x = x.contiguous(memory_format=fmt)
    y = torch.zeros(bs, 20, device=device)
    for b in range(bs):
        y[b, [b % 20, (b + 7) % 20]] = 1
    return cfg, model, opt, eader, x, y, body, labelled


def adversary_alone(eader, x, y, mode):
    """The adversary's own work of one turn, without the localizer: loc turn = forward + backward to the
    erased images with its parameters frozen; adv turn = forward + backward + SGD step. In float32, as in
    train_cam.train_step, where the hook runs outside the localizer's bf16 autocast."""
    import torch
    from psa_eader.hook import frozen
    adv, k = eader.adversary, int((y > 0.5).sum())
    img_idx = (y > 0.5).nonzero(as_tuple=True)[0]
    erased = torch.randn(k, 3, *x.shape[-2:], device=x.device)
    if mode == "eader_loc":
        e = erased.requires_grad_()
        with frozen(adv):
            out = adv(e)
        out.float().sigmoid().mean().backward()
    else:
        eader.adv_optimizer.zero_grad(set_to_none=True)
        out = adv(erased)
        torch.nn.functional.binary_cross_entropy_with_logits(out.float(), y[img_idx]).backward()
        eader.adv_optimizer.step()


def child(spec):
    """kind 'memory': one mode in this fresh process (peak memory, forward counts, step time);
    kind 'timing': all modes round-robin in one process, so machine load hits them alike."""
    import torch
    from stages.train_cam import train_step
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    timing = spec["kind"] == "timing"
    cfg, model, opt, eader, x, y, body, labelled = build(spec["setting"], "eader_loc" if timing else spec["mode"],
                                                         spec["batch"], device, spec.get("set", ()))
    amp = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if spec["dtype"] == "bf16"
           else contextlib.nullcontext)
    counts = {"localizer_body": 0, "adversary": 0}
    body.register_forward_hook(lambda *a: counts.__setitem__("localizer_body", counts["localizer_body"] + 1))
    if eader is not None:
        eader.adversary.register_forward_hook(lambda *a: counts.__setitem__("adversary", counts["adversary"] + 1))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    static = torch.cuda.memory_allocated() / 2**20 if cuda else maxrss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    turn_start = {"baseline": 0, "eader_loc": 0, "eader_adv": cfg["eader"]["phase_steps"]}

    def one(task):
        """Seconds of one step of `task` (a mode, or ('alone', mode))."""
        for k in counts:
            counts[k] = 0
        sync()
        t0 = time.perf_counter()
        if isinstance(task, tuple):
            adversary_alone(eader, x, y, task[1])
        else:
            if task != "baseline":
                eader.step = turn_start[task]  # stay in the measured turn
            with labelled(y):
                train_step(model, opt, None if task == "baseline" else eader, x, y, amp)
        sync()
        return time.perf_counter() - t0

    if timing:
        tasks = list(MODES) + [("alone", "eader_loc"), ("alone", "eader_adv")]
        times = {str(t): [] for t in tasks}
        fwd = {}
        for r in range(spec["warmup"] + spec["steps"]):
            for t in tasks[r % len(tasks):] + tasks[:r % len(tasks)]:  # rotate the order every round
                dt = one(t)
                if r >= spec["warmup"]:
                    times[str(t)].append(dt)
                if isinstance(t, str):
                    fwd[t] = dict(counts)
        med = {t: statistics.median(v) for t, v in times.items()}
        return {**spec, "batch_used": x.shape[0], "crop": x.shape[-1], "erased_images": int((y > 0.5).sum()),
                "step_s_median": med, "step_s": times, "forwards_per_step": fwd}
    times = [one(spec["mode"]) for _ in range(spec["warmup"] + spec["steps"])][spec["warmup"]:]
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else maxrss_mb()
    return {**spec, "batch_used": x.shape[0], "crop": x.shape[-1], "step_s_median": statistics.median(times),
            "step_s": times, "forwards_per_step": dict(counts), "static_mb": round(static, 1),
            "peak_mb": round(peak, 1), "localizer_params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "adversary_params_m": round(sum(p.numel() for p in eader.adversary.parameters()) / 1e6, 2)
            if eader is not None else None, "memory_source": "cuda" if cuda else "ru_maxrss"}


def run_child(spec, timeout):
    cmd = [sys.executable, "-m", "scripts.bench_eader", "--child", json.dumps(spec)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def table(results):
    """Markdown: one row per (setting, dtype): times and ratios EADER/baseline (timing process), memory
    (one fresh process per mode)."""
    lines = ["| setting | dtype | batch x crop | baseline s/step | EADER localizer turn s/step (ratio) | "
             "EADER adversary turn s/step (ratio) | 200/200 cycle mean (ratio) | adversary alone: loc turn / "
             "adv turn s | loc turn - baseline s | localizer-body / adversary forwards per step: base, loc, adv | "
             "peak MB base / loc / adv (ratio loc/base) | static MB base / EADER |", "|" + "---|" * 12]
    keys = sorted({(r["setting"], r["dtype"]) for r in results}, key=lambda k: (SETTINGS.index(k[0]), k[1]))
    for s, d in keys:
        tim = [r for r in results if r["setting"] == s and r["dtype"] == d and r["kind"] == "timing"]
        mem = {r["mode"]: r for r in results if r["setting"] == s and r["dtype"] == d and r["kind"] == "memory"}
        if not tim:
            continue
        t = tim[-1]
        m = t["step_s_median"]
        tb, tl, ta = m["baseline"], m["eader_loc"], m["eader_adv"]
        al, aa = m[str(("alone", "eader_loc"))], m[str(("alone", "eader_adv"))]
        cyc = (tl + ta) / 2
        fw = " , ".join(f"{t['forwards_per_step'][k]['localizer_body']}/{t['forwards_per_step'][k]['adversary']}"
                        for k in MODES)
        if set(mem) == set(MODES):
            b, lo, ad = mem["baseline"], mem["eader_loc"], mem["eader_adv"]
            memtxt = (f"{b['peak_mb']:.0f} / {lo['peak_mb']:.0f} / {ad['peak_mb']:.0f} ({lo['peak_mb'] / b['peak_mb']:.2f})"
                      f" | {b['static_mb']:.0f} / {lo['static_mb']:.0f}")
        else:
            memtxt = "- | -"
        lines.append(f"| {s} | {d} | {t['batch_used']} x {t['crop']} | {tb:.3f} | {tl:.3f} ({tl / tb:.2f}) | "
                     f"{ta:.3f} ({ta / tb:.2f}) | {cyc:.3f} ({cyc / tb:.2f}) | {al:.3f} / {aa:.3f} | {tl - tb:.3f} | "
                     f"{fw} | {memtxt} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=["demo", "full"])
    p.add_argument("--dtypes", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=1, help="batch of the full-size settings (default %(default)s)")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed round-robin rounds after one warm-up round (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per measurement (default %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=7200, help="seconds per measurement")
    p.add_argument("--out", default="work/bench_eader", help="writes OUT.json and OUT.md")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value",
                   help="config overrides for every measurement, e.g. eader.autocast=true")
    p.add_argument("--no-memory", action="store_true",
                   help="timing process only (skip the three memory processes per setting and dtype)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    results = []
    out = Path(args.out)
    from psa_baseline.fileio import write_json, write_text
    for s in args.settings:
        for d in args.dtypes:
            base = {"setting": s, "dtype": d, "batch": args.batch, "threads": args.threads, "device": args.device,
                    "set": args.set}
            jobs = [{**base, "kind": "timing", "steps": args.rounds, "warmup": 1}]
            if not args.no_memory:
                jobs += [{**base, "kind": "memory", "mode": m, "steps": 1, "warmup": 1} for m in MODES]
            for spec in jobs:
                t0 = time.time()
                r = run_child(spec, args.timeout)
                results.append(r)
                what = spec["kind"] + (f" {spec['mode']}" if "mode" in spec else "")
                sm = r["step_s_median"]
                info = (" ".join(f"{k} {v:.3f}s" for k, v in sm.items()) if isinstance(sm, dict)
                        else f"step {sm:.3f}s peak {r['peak_mb']:.0f} MB forwards {r['forwards_per_step']}")
                print(f"{s} {d} {what}: {info} ({time.time() - t0:.0f} s)", flush=True)
                write_json(out.with_suffix(".json"), results)  # after each: partial results survive
                write_text(out.with_suffix(".md"), table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
