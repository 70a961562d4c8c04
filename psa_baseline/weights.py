"""Load weights from local files into our networks, whatever naming the file uses.

Accepted files:
  * ademxapp's MXNet ImageNet model (ilsvrc-cls_rna-a1_cls1000_ep-0001.params), read without MXNet;
    names are mapped the way PSA's `convert_mxnet_to_torch` maps them, the 1000-way classifier dropped;
  * a PyTorch state dict converted from it, or PSA's trained res38_cls.pth / res38_aff.pth
    (PSA's module names at top level);
  * our own checkpoints (`backbone.` prefix, maybe DDP's `module.`, maybe wrapped as {"model": ...}).
Keys are matched with and without the `backbone.` prefix, so a backbone-only file fills a CAMNet's
backbone and a CAMNet file fills a bare WideResNet38.

    python -m psa_baseline.weights convert ilsvrc-cls_rna-a1_cls1000_ep-0001.params res38_imagenet.pth
    python -m psa_baseline.weights info FILE.params
"""
import argparse
import logging
import re
import struct
import sys
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import InputError
from .fileio import save_torch
from .mxnet_params import FILE_MAGIC, load_params_dict, read_records, strip_prefix

log = logging.getLogger(__name__)

# ademxapp (util/symbol/resnet_v2.py): block "<level><a|bN>", convs "res<block>_branch<1|2a|2b1|2b2>",
# their pre-activation BNs "bn<block>_branch<2a|2b1|2b2>", stem "conv1a", final BN "bn7",
# classifier "linear1000". PSA: block "b<level>" for "a", "b<level>_<N>" for "bN".
_BLOCK = re.compile(r"(res|bn)(\d+)(a|b(\d+))_branch(1|2a|2b1|2b2)_(\w+)$")
_BN7 = re.compile(r"bn7_(\w+)$")
_CLASSIFIER = re.compile(r"linear\d+_(weight|bias)$")
_BN_PARAMS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_var": "running_var"}
DROPPED = object()  # ademxapp_to_psa's answer for the ImageNet classifier


def ademxapp_to_psa(name):
    """PSA key for an ademxapp parameter name (an `arg:`/`aux:` prefix is allowed).

    Returns DROPPED for the ImageNet classifier and None for a name outside ademxapp's scheme.
    """
    name = strip_prefix(name)
    if name == "conv1a_weight":
        return "conv1a.weight"
    if _CLASSIFIER.match(name):
        return DROPPED
    m = _BN7.match(name)
    if m and m.group(1) in _BN_PARAMS:
        return "bn7." + _BN_PARAMS[m.group(1)]
    m = _BLOCK.match(name)
    if not m:
        return None
    kind, level, _, sub, branch, param = m.groups()
    block = f"b{level}" if sub is None else f"b{level}_{sub}"
    if kind == "res" and param == "weight":
        return f"{block}.conv_branch{branch}.weight"
    if kind == "bn" and branch != "1" and param in _BN_PARAMS:
        return f"{block}.bn_branch{branch}.{_BN_PARAMS[param]}"
    return None


@dataclass
class LoadReport:
    path: str
    kind: str                                            # "mxnet" or "torch"
    loaded: list = field(default_factory=list)           # module keys filled from the file
    missing: list = field(default_factory=list)          # module keys the file did not provide
    unexpected: list = field(default_factory=list)       # file keys with no place in the module
    shape_mismatch: list = field(default_factory=list)   # (module key, file shape, module shape)
    dropped: list = field(default_factory=list)          # file keys skipped on purpose (ImageNet classifier)

    def summary(self):
        def few(keys, n=6):
            keys = [k if isinstance(k, str) else k[0] for k in keys]
            return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")
        lines = [f"loaded {len(self.loaded)} tensors from {self.path} ({self.kind})"]
        for label, keys in (("missing (left as initialised)", self.missing),
                            ("unexpected (ignored)", self.unexpected),
                            ("dropped (ImageNet classifier)", self.dropped),
                            ("shape mismatch", self.shape_mismatch)):
            if keys:
                lines.append(f"  {label}: {len(keys)}: {few(keys)}")
        return "\n".join(lines)


def _is_mxnet(path):
    with open(path, "rb") as f:
        return f.read(8) == struct.pack("<Q", FILE_MAGIC)


def read_state_dict(path, missing=None, fix=None):
    """The state dict (name -> tensor) a PyTorch weights file holds: our weights, a checkpoint's {"model": ...}
    or {"state_dict": ...}, a torchvision / timm ImageNet file. The one reader of PyTorch weight files, so that
    every loader refuses a missing, torn, foreign or code-carrying file with the same InputError. `missing`:
    the message for a file that is not there (default: that it does not exist); `fix`: what to do about an
    unreadable one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(missing or f"weights file {path} does not exist or is not a file")
    try:
        # weights_only: a state dict needs no code execution, and a stranger's file must not get any
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file: zip, pickle, EOF errors by version
        first = str(e).splitlines()[0][:300] if str(e) else ""
        raise InputError(f"{path} cannot be read as weights, a PyTorch state dict or checkpoint "
                         f"({type(e).__name__}: {first}){'; ' + fix if fix else ''}") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise InputError(f"{path} holds a {type(obj).__name__}, expected a state dict (name -> tensor) "
                         f"or a checkpoint dict with a 'model' entry{'; ' + fix if fix else ''}")
    return obj


def read_weight_file(path, kind="auto"):
    """(kind, {name: tensor}) from an MXNet .params or a PyTorch file; names as stored in the file."""
    path = Path(path)
    if kind not in ("auto", "mxnet", "torch"):
        raise ValueError(f"kind must be auto, mxnet or torch, not {kind!r}")
    if not path.is_file():
        raise InputError(f"weights file {path} does not exist or is not a file (expected an ademxapp .params, PSA's "
                         f"res38_cls.pth / res38_aff.pth or one of our checkpoints)")
    try:
        if kind == "auto":
            kind = "mxnet" if _is_mxnet(path) else "torch"
    except OSError as e:
        raise InputError(f"cannot read weights file {path}: {e.strerror}") from None
    if kind == "mxnet":
        return kind, {k: torch.from_numpy(v) for k, v in load_params_dict(path, strip=False).items()}
    obj = read_state_dict(path)
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v)}
    if not tensors:
        raise InputError(f"{path} holds no tensors (expected a state dict or a checkpoint with 'model')")
    return kind, tensors


def _candidates(key):
    """Module keys a file key may stand for, most literal first."""
    key = strip_prefix(key)
    if key.startswith("module."):  # DistributedDataParallel
        key = key[len("module."):]
    mapped = ademxapp_to_psa(key)
    if mapped is DROPPED:
        return DROPPED
    if mapped is not None:
        key = mapped
    out = [key, "backbone." + key]
    if key.startswith("backbone."):
        out.append(key[len("backbone."):])
    return out


def match_keys(file_keys, module_keys):
    """({module key: file key}, unexpected, dropped)."""
    module_keys = set(module_keys)
    mapping, unexpected, dropped = {}, [], []
    for fk in file_keys:
        cands = _candidates(fk)
        if cands is DROPPED:
            dropped.append(fk)
            continue
        mk = next((c for c in cands if c in module_keys), None)
        if mk is None:
            unexpected.append(fk)
        elif mk in mapping:
            raise InputError(f"file keys {mapping[mk]!r} and {fk!r} both map to {mk!r}")
        else:
            mapping[mk] = fk
    return mapping, unexpected, dropped


def _mismatch_message(path, module, mismatches):
    lines = [f"{path}: {len(mismatches)} tensors have the wrong shape for {type(module).__name__}:"]
    lines += [f"  {k}: file {tuple(fs)} vs module {tuple(ms)}" for k, fs, ms in mismatches[:5]]
    ratios = Counter(fs[0] / ms[0] for _, fs, ms in mismatches if len(fs) == len(ms) and fs and ms[0])
    if ratios:
        r = ratios.most_common(1)[0][0]
        if r != 1:
            lines.append(f"channel counts differ by a factor of about {r:g}: the file was made for a "
                         f"different width multiplier (Res38Spec.width) than this network")
    lines.append("(a different number of blocks or classes shows up the same way; check the network spec)")
    return "\n".join(lines)


def load_weights(module: torch.nn.Module, path, kind="auto", strict=False) -> LoadReport:
    """Fill `module` from the file at `path`; returns (and logs) what was loaded.

    Raises InputError for a missing/unreadable file, a file none of whose keys fits the module, any
    shape mismatch, or (strict=True) any missing or unexpected key. BatchNorm's num_batches_tracked
    never counts as missing (ademxapp and PyTorch 0.4 files do not have it).
    """
    kind, tensors = read_weight_file(path, kind)
    state = module.state_dict()
    mapping, unexpected, dropped = match_keys(tensors, state)
    report = LoadReport(str(path), kind, unexpected=unexpected, dropped=dropped)
    if not mapping:
        raise InputError(
            f"{path}: none of its {len(tensors)} tensors matches a key of {type(module).__name__} "
            f"(expected ademxapp ResNet-38 .params, a PSA-named state dict or one of our checkpoints). "
            f"File keys look like: {', '.join(list(tensors)[:4])}; module keys look like: "
            f"{', '.join(list(state)[:4])}")
    for mk, fk in mapping.items():
        if tuple(tensors[fk].shape) != tuple(state[mk].shape):
            report.shape_mismatch.append((mk, tuple(tensors[fk].shape), tuple(state[mk].shape)))
    if report.shape_mismatch:
        raise InputError(_mismatch_message(path, module, report.shape_mismatch))
    report.missing = [k for k in state if k not in mapping and not k.endswith("num_batches_tracked")]
    if strict and (report.missing or report.unexpected):
        raise InputError(f"{path} does not fit {type(module).__name__} exactly (strict):\n{report.summary()}")
    with torch.no_grad():
        for mk, fk in mapping.items():
            state[mk].copy_(tensors[fk])  # state_dict tensors share storage with the module
            report.loaded.append(mk)
    log.info("%s", report.summary())
    if report.missing:
        log.warning("%d module tensors not in %s, left as initialised: %s", len(report.missing), path,
                    ", ".join(report.missing[:8]) + (" ..." if len(report.missing) > 8 else ""))
    return report


def convert_mxnet_to_torch(params_path, out_path):
    """Write ademxapp's MXNet ResNet-38 weights as a PSA-named PyTorch state dict (classifier dropped).

    Returns the state dict. Every array must be an ademxapp name; anything else is refused.
    """
    arrays = load_params_dict(params_path, strip=True)
    sd, unknown = OrderedDict(), []
    for name, arr in arrays.items():
        key = ademxapp_to_psa(name)
        if key is None:
            unknown.append(name)
        elif key is not DROPPED:
            sd[key] = torch.from_numpy(arr)
    if unknown or not sd:
        raise InputError(f"{params_path}: not an ademxapp ResNet-38 file; {len(unknown)} of {len(arrays)} "
                         f"names are outside its scheme (e.g. {', '.join(unknown[:4])})")
    save_torch(out_path, sd)
    log.info("wrote %d tensors to %s (%d dropped)", len(sd), out_path, len(arrays) - len(sd))
    return sd


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m psa_baseline.weights", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="ademxapp MXNet .params -> PSA-named PyTorch state dict")
    c.add_argument("params")
    c.add_argument("out")
    i = sub.add_parser("info", help="list the arrays of an MXNet .params file")
    i.add_argument("params")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.cmd == "convert":
            sd = convert_mxnet_to_torch(args.params, args.out)
            print(f"wrote {len(sd)} tensors to {args.out}")
        else:
            for r in read_records(args.params, load=False):
                print(f"{r.offset:>12} {r.layout:<6} {str(r.shape):<22} dtype={r.dtype_flag} {r.name or ''}")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
