"""Configs: YAML files in configs/, checked against configs/voc.yaml (the schema and paper defaults).

A config file may name `base: OTHER` (default voc) and override any existing key. Command-line
overrides are dotted `key=value` pairs parsed as YAML (`cam_train.epochs=2`, `net.blocks=[1,1,1,1]`).
Unknown keys and values of the wrong type stop with an error naming the key.
"""
import copy
import hashlib
import json
import math
import re
from pathlib import Path

import yaml

from psa_baseline.errors import InputError
from psa_baseline.hardware import AUTO, resolve_bf16
from psa_eader.adversary import ARCHS
from psa_eader.losses import AM_FORMS, REG_RESOLUTIONS
from psa_eader.masks import NORMS

# the folder holding configs/, voc12/ and demo/: the checkout, or site-packages/psa_eader in a wheel (pyproject.toml)
PROJECT_DIR = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_DIR / "configs"
SCHEMA = "voc"
# eader.localizer_poly: the two readings of the localizer's poly schedule with the hook (train_cam.poly_max_step)
POLY_READINGS = ("own_steps", "all_steps")
# Keys whose schema value is null: the types they accept.
# The weights keys (net.weights, eader.adv_weights, standalone.weights, seg_train.encoder_weights) take a
# file path, or the string `random` for random initialisation on purpose; null is refused by the training
# stages that need the file (stages.builders.require_weights).
NULLABLE = {
    "voc_root": str, "variant": str, "data.cls_labels": str, "data.part_masks": str,
    "net.weights": str, "eader.adv_weights": str,  # file path or "random"
    "standalone.weights": str, "standalone.phase_steps": int,  # standalone.weights: file path or "random"
    "standalone.adv_width": float,
    "seg_train.encoder_weights": str,  # file path or "random"
}
# bf16 autocast switches: true, false or `auto` (bf16 on CUDA and on CPUs with native bf16, float32 elsewhere).
# load_config resolves auto for the config's device, so fingerprints hold the precision that runs.
BF16_KEYS = ("cam_train.bf16", "cam_infer.bf16", "adv_pretrain.bf16", "standalone.bf16", "aff_train.bf16",
             "seg_train.bf16")


def _read_yaml(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise InputError(f"config {path}: not valid YAML ({e})") from e
    except UnicodeDecodeError as e:
        raise InputError(f"config {path}: not UTF-8 text (byte {e.start}: {e.reason}); "
                         f"save it as UTF-8") from e
    except OSError as e:
        raise InputError(f"config {path}: cannot read it ({e.strerror}); check the path and its permissions") from e
    if not isinstance(data, dict):
        raise InputError(f"config {path}: expected a mapping of keys at top level")
    return data


def config_path(name_or_file):
    p = Path(name_or_file)
    # a file path, not a folder: `demo` is also the demo package's folder in the project root
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.exists():
            raise InputError(f"config file {p} not found")
        return p
    p = CONFIG_DIR / f"{name_or_file}.yaml"
    if not p.exists():
        names = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
        raise InputError(f"unknown config '{name_or_file}': use one of {names} or a path to a YAML file")
    return p


def _base_path(base, child):
    """`base:` of config file `child`: a file or name looked up in child's folder, then in configs/,
    never in the current directory (a config must mean the same wherever it is run from)."""
    p = Path(str(base))
    names = [p] if p.suffix in (".yaml", ".yml") else [p.with_name(p.name + ".yaml"), p]
    cands = [n if n.is_absolute() else folder / n
             for folder in (child.resolve().parent, CONFIG_DIR) for n in names]
    for c in dict.fromkeys(cands):
        if c.is_file():
            return c
    raise InputError(f"config {child}: base '{base}' not found (tried {', '.join(str(c) for c in dict.fromkeys(cands))}); "
                     f"name a config in configs/ or a YAML file relative to {child.resolve().parent}")


def _check_type(key, value, ref):
    if key in BF16_KEYS:  # the merged value may already be auto, so not checked against it
        if isinstance(value, bool) or value == AUTO:
            return value
        raise InputError(f"config key '{key}': expected true, false or auto, got {value!r}")
    if value is None and key in NULLABLE:  # a derived config may unset what its base set
        return None
    if ref is None:
        want = NULLABLE.get(key)
        if value is None or want is None or isinstance(value, want):
            return value
        raise InputError(f"config key '{key}': expected {want.__name__} or null, got {value!r}")
    if value is None:
        raise InputError(f"config key '{key}' may not be null (default {ref!r})")
    if isinstance(ref, bool):
        if not isinstance(value, bool):
            raise InputError(f"config key '{key}': expected true/false, got {value!r}")
        return value
    if isinstance(ref, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(ref, list):
        if not isinstance(value, list):
            raise InputError(f"config key '{key}': expected a list like {ref!r}, got {value!r}")
        if ref and all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in ref):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise InputError(f"config key '{key}': expected a list of numbers, got {value!r}")
        return value
    if not isinstance(value, type(ref)) or isinstance(value, bool):
        raise InputError(f"config key '{key}': expected {type(ref).__name__}, got {value!r}")
    return value


def merge(base, over, prefix=""):
    """Recursive override; every key of `over` must exist in `base` (the schema)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        key = f"{prefix}{k}"
        if k not in base:
            raise InputError(f"unknown config key '{key}' (known: {', '.join(sorted(base))})")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise InputError(f"config key '{key}' is a section; give its keys, e.g. {key}.{next(iter(base[k]))}=...")
            out[k] = merge(base[k], v, key + ".")
        else:
            out[k] = _check_type(key, v, base[k])
    return out


def parse_override(text):
    """'a.b=1' -> {'a': {'b': 1}} with the value parsed as YAML; ("a.b", value) kept as is."""
    if isinstance(text, tuple):
        key, value = text
        node = value
        for part in reversed(key.split(".")):
            node = {part: node}
        return node
    if "=" not in text:
        raise InputError(f"override '{text}': expected key=value, e.g. cam_train.epochs=2")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    node = value
    for part in reversed(key.strip().split(".")):
        node = {part: node}
    return node


def load_config(name_or_file="voc", overrides=()):
    schema = _read_yaml(CONFIG_DIR / f"{SCHEMA}.yaml")
    chain, path, seen = [], config_path(name_or_file), set()
    while True:  # follow `base:` links
        if path.resolve() in seen:
            raise InputError(f"config {path}: circular 'base'")
        seen.add(path.resolve())
        data = _read_yaml(path)
        base = data.pop("base", None if path.stem == SCHEMA else SCHEMA)
        chain.append(data)
        if base is None:
            break
        base_path = _base_path(base, path)
        if base_path.resolve() == (CONFIG_DIR / f"{SCHEMA}.yaml").resolve():
            break
        path = base_path
    cfg = schema
    for data in reversed(chain):
        cfg = merge(cfg, data)
    for o in overrides:
        cfg = merge(cfg, parse_override(o))
    validate(cfg)
    resolve_precision(cfg)
    return cfg


def resolve_precision(cfg):
    """Every bf16 key as the bool that runs on cfg's device (see BF16_KEYS); in place, returns cfg."""
    for key in BF16_KEYS:
        section, name = key.split(".")
        cfg[section][name] = resolve_bf16(cfg[section][name], cfg["device"], key)
    return cfg


# A name that becomes a folder: letters, digits and . _ + = -, not starting with a dot (no `..`, no `/`),
# so <work>/<variant>/ can never point outside the work dir.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9_.+=-]{0,99}")


def plain_name(text):
    return isinstance(text, str) and PLAIN_NAME.fullmatch(text) is not None


def validate(cfg):
    def need(cond, key, msg):
        if not cond:
            raise InputError(f"config key '{key}': {msg}")
    need(cfg["variant"] is None or plain_name(cfg["variant"]), "variant",
         f"{cfg['variant']!r} is not a plain folder name: use letters, digits and . _ + = - (not starting with "
         f"a dot, no / or \\); it names <work_dir>/<variant>/")
    for k, v in cfg.items():  # every number in the config: NaN and infinity are never meant
        _need_finite(v, k, need)
    for section, sec in cfg.items():  # optimiser settings by name, wherever they stand
        if not isinstance(sec, dict):
            continue
        for k, v in sec.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            key = f"{section}.{k}"
            if k == "lr" or k.endswith("_lr") or k.endswith("lr_mult"):
                need(v > 0, key, f"{v} must be positive (a learning rate or its multiplier)")
            elif k.endswith("weight_decay") or k == "poly_power":
                need(v >= 0, key, f"{v} must be zero or positive")
            elif k.endswith("momentum"):
                need(0 <= v < 1, key, f"{v} must be in [0, 1)")
    need(cfg["device"] in ("cpu", "cuda") or str(cfg["device"]).startswith("cuda:"), "device", "use cpu or cuda")
    need(0 < cfg["net"]["width"] <= 1.0, "net.width", "must be in (0, 1]")
    need(len(cfg["net"]["blocks"]) == 4 and all(isinstance(b, int) and b >= 0 for b in cfg["net"]["blocks"]),
         "net.blocks", "four non-negative integers (extra blocks after b2, b3, b4, b5)")
    t = cfg["cam_train"]
    for k in ("batch_size", "epochs", "crop", "checkpoint_every", "log_every"):
        need(t[k] > 0, f"cam_train.{k}", "must be positive")
    need(len(t["resize_long"]) == 2 and 0 < t["resize_long"][0] <= t["resize_long"][1],
         "cam_train.resize_long", "[low, high] with 0 < low <= high")
    need(len(cfg["cam_infer"]["scales"]) > 0 and all(s > 0 for s in cfg["cam_infer"]["scales"]),
         "cam_infer.scales", "a non-empty list of positive scales")
    need(cfg["cam_infer"]["num_workers"] >= 0, "cam_infer.num_workers", "0 (in this process) or more processes")
    need(0 <= cfg["cam_eval"]["threshold"] <= 1, "cam_eval.threshold", "must be in [0, 1]")
    need(len(cfg["cam_eval"]["sweep"]) == 3 and cfg["cam_eval"]["sweep"][2] > 0, "cam_eval.sweep",
         "[start, stop, step] with step > 0")
    need(cfg["eader"]["am_form"] in AM_FORMS, "eader.am_form", " or ".join(AM_FORMS))
    need(cfg["eader"]["phase_steps"] > 0, "eader.phase_steps", "must be positive")
    need(cfg["eader"]["att_norm"] in NORMS, "eader.att_norm", " or ".join(NORMS))
    need(cfg["eader"]["reg_resolution"] in REG_RESOLUTIONS, "eader.reg_resolution", " or ".join(REG_RESOLUTIONS))
    need(cfg["eader"]["localizer_poly"] in POLY_READINGS, "eader.localizer_poly", " or ".join(POLY_READINGS))
    s = cfg["standalone"]
    need(s["arch"] in ARCHS, "standalone.arch", " or ".join(ARCHS))
    need(0 < s["width"] <= 1.0, "standalone.width", "must be in (0, 1]")
    for k in ("batch_size", "epochs", "crop", "checkpoint_every", "log_every"):
        need(s[k] > 0, f"standalone.{k}", "must be positive")
    need(s["phase_steps"] is None or s["phase_steps"] > 0, "standalone.phase_steps", "positive or null")
    need(s["adv_width"] is None or 0 < s["adv_width"] <= 1, "standalone.adv_width", "in (0, 1] or null")
    need(len(s["resize_long"]) == 2 and 0 < s["resize_long"][0] <= s["resize_long"][1],
         "standalone.resize_long", "[low, high] with 0 < low <= high")
    need(0 <= s["rho"] <= 1, "standalone.rho", "must be in [0, 1]")
    need(len(s["infer_scales"]) > 0 and all(x > 0 for x in s["infer_scales"]), "standalone.infer_scales",
         "a non-empty list of positive scales")
    need(len(s["sweep"]) == 3 and s["sweep"][2] > 0, "standalone.sweep", "[start, stop, step] with step > 0")


def _need_finite(v, key, need):
    if isinstance(v, dict):
        for k, x in v.items():
            _need_finite(x, f"{key}.{k}", need)
    elif isinstance(v, list):
        for x in v:
            _need_finite(x, key, need)
    elif isinstance(v, float):
        need(math.isfinite(v), key, f"{v} is not a finite number")


def variant_name(cfg):
    return cfg["variant"] or ("eader" if cfg["eader"]["enabled"] else "baseline")


# Keys that change how a run logs, checkpoints or loads data but not what it computes: a change of one
# of them must not redo a finished stage (resume is exact, so checkpoint_every does not change weights).
NOT_IN_FINGERPRINT = frozenset({"log_every", "checkpoint_every", "workers", "num_workers"})


def _without_logging_keys(x):
    if isinstance(x, dict):
        return {k: _without_logging_keys(v) for k, v in x.items() if k not in NOT_IN_FINGERPRINT}
    if isinstance(x, (list, tuple)):
        return [_without_logging_keys(v) for v in x]
    return x


def fingerprint(*parts):
    """Stable short hash of config sections (and upstream fingerprints) that decide an output;
    NOT_IN_FINGERPRINT keys are left out wherever they appear."""
    blob = json.dumps(_without_logging_keys(parts), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def resolve_data_path(cfg, rel, what, fix="set --voc-root or the config key to an existing path"):
    """Absolute as given; relative: under voc_root, then the project folder. `fix`: what the error tells the
    user to do when no candidate exists."""
    p = Path(rel)
    if p.is_absolute():
        cands = [p]
    else:
        cands = ([Path(cfg["voc_root"]) / p] if cfg["voc_root"] else []) + [PROJECT_DIR / p]
    for c in cands:
        if c.exists():
            return c
    raise InputError(f"{what} not found: tried {', '.join(str(c) for c in cands)}; {fix}")
