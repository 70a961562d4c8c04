"""Subcommand weights: download, list, convert and inspect the published ImageNet weight files.

    psa-eader weights list                                   # the files, their URLs, which config key takes each
    psa-eader weights download wideresnet38 resnet18 --cache-dir /models
    psa-eader weights convert IN.params OUT.pth              # ademxapp MXNet -> PSA-named PyTorch state dict
    psa-eader weights info FILE.params                       # the arrays of an MXNet .params file

download fetches each file to a temporary name in the cache dir, checks its published digest and renames
it; a file that fails the check is deleted (exit 2). A file already in the cache dir is checked, not
fetched again, so a file copied there by hand (offline machines) is verified the same way.
Digests: torchvision and timm's releases publish the first 8 hex digits of each file's SHA-256 in its name (what
torch.hub checks); ResNet-18's full SHA-256 and size are also checked (as widely recorded for that file).
ademxapp publishes an MD5 (models/checksum.md5 of itijyou/ademxapp); its SHA-256 is not published: the
command prints it after the first download so you can record it.
"""
import hashlib
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from psa_baseline.errors import InputError

DEFAULT_CACHE = Path.home() / ".cache" / "psa-eader" / "weights"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Published:
    filename: str
    url: str
    key: str                       # the config key that takes this file
    use: str                       # what it initialises
    sha256_prefix: Optional[str] = None   # torchvision: first 8 hex digits, in the file name
    sha256: Optional[str] = None
    md5: Optional[str] = None
    size: Optional[int] = None
    note: str = ""


KNOWN = {
    "wideresnet38": Published(
        "ilsvrc-cls_rna-a1_cls1000_ep-0001.params",
        # ademxapp's README (Model A1, "aar" link); AARNet CloudStor, which may no longer serve it
        "https://cloudstor.aarnet.edu.au/plus/index.php/s/NOPhJ247fhVDnZH/download",
        "net.weights", "PSA's WideResNet-38 (train-cam; train-aff with aff_train.init imagenet)",
        md5="ff21f45d6bf03284100dcbec571edfad",
        note="MD5 from ademxapp's models/checksum.md5; SHA-256 not published (printed after download); "
             "about 500 MB; if the link is dead, copy the file into the cache dir by hand"),
    "resnet18": Published(
        "resnet18-f37072fd.pth", "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "eader.adv_weights", "EADER's adversary (torchvision ResNet18_Weights.IMAGENET1K_V1)",
        sha256_prefix="f37072fd",
        sha256="f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec", size=46830571),
    "resnet101": Published(
        "resnet101-63fe2227.pth", "https://download.pytorch.org/models/resnet101-63fe2227.pth",
        "standalone.weights", "the standalone localizer, and DeepLabV3+'s encoder as seg_train.encoder_weights "
        "(torchvision ResNet101_Weights.IMAGENET1K_V1)",
        sha256_prefix="63fe2227", note="full SHA-256 not published (torchvision checks the 8-digit prefix)"),
    "xception65": Published(
        "tf_xception_65-c9ae96e8.pth",
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/tf_xception_65-c9ae96e8.pth",
        "seg_train.encoder_weights", "DeepLabV3+'s encoder with seg_train.encoder xception65: DeepLab's TensorFlow "
        "ImageNet Xception-65 as ported by timm (its model xception65.tf_in1k)",
        sha256_prefix="c9ae96e8",
        note="timm's release file; the first 8 hex digits of its SHA-256 are in the name, as torch.hub checks "
             "them; timm now serves the same model from the Hugging Face hub (timm/xception65.tf_in1k)"),
}


def add_arguments(p):
    # the action and its operands arrive in the common positional list (`set`); say so in the help
    for a in p._actions:
        if a.dest == "set":
            a.metavar = "ACTION [NAME|FILE ...]"
            a.help = ("list | download NAME... | convert IN.params OUT.pth | info FILE.params "
                      f"(names: {', '.join(KNOWN)})")
    p.add_argument("--cache-dir", help=f"where download puts the files (default {DEFAULT_CACHE})")
    p.add_argument("--url", help="download from this mirror instead of the published URL (one NAME only)")


def cache_dir(args):
    return Path(args.cache_dir) if getattr(args, "cache_dir", None) else DEFAULT_CACHE


def lookup(name):
    if name not in KNOWN:
        raise InputError(f"unknown weights name {name!r}: use one of {', '.join(KNOWN)} "
                         f"(`psa-eader weights list`)")
    return KNOWN[name]


def digests(path):
    """(sha256 hex, md5 hex, size) of a file, read once."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), md5.hexdigest(), size


def mismatches(entry, sha, md5, size):
    """What of the published digests the file fails, as readable lines (empty: it is the file)."""
    bad = []
    if entry.size is not None and size != entry.size:
        bad.append(f"size {size} bytes, published {entry.size}")
    if entry.sha256 and sha != entry.sha256:
        bad.append(f"SHA-256 {sha}, published {entry.sha256}")
    elif entry.sha256_prefix and not sha.startswith(entry.sha256_prefix):
        bad.append(f"SHA-256 {sha} does not start with the published {entry.sha256_prefix}")
    if entry.md5 and md5 != entry.md5:
        bad.append(f"MD5 {md5}, published {entry.md5}")
    return bad


def verify(entry, path, source, delete=True):
    """Check `path` against the published digests; raise InputError when it fails, deleting a download
    (a file the user put there is left for them to look at)."""
    sha, md5, size = digests(path)
    bad = mismatches(entry, sha, md5, size)
    if not bad:
        return sha
    if delete:
        Path(path).unlink()
        fix = "the file was deleted; download it again (a proxy or a truncated transfer?)"
    else:
        fix = f"delete {path} and download it again"
    raise InputError(f"{source} is not the published {entry.filename}: {'; '.join(bad)}; {fix} "
                     f"(published at {entry.url})")


def fetch(url, tmp, timeout=60):
    """Stream `url` into `tmp`; network failures become InputErrors that say what to do."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise InputError(f"{url}: the server answered HTTP {e.code} ({e.reason})") from None
    except (urllib.error.URLError, OSError) as e:  # no route, DNS, refused, timeout
        reason = getattr(e, "reason", e)
        raise InputError(f"cannot reach {url} ({reason}): this machine seems to be offline") from None
    try:
        with response, open(tmp, "wb") as f:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                f.write(chunk)
    except OSError as e:  # the connection broke off, or the disk is full
        raise InputError(f"downloading {url} into {tmp} failed ({e})") from None


def download(name, cache, url=None, log=print):
    """The verified file for `name` in `cache` (fetched when not there yet); returns its path."""
    entry = lookup(name)
    cache = Path(cache)
    dest = cache / entry.filename
    if dest.is_file():
        sha = verify(entry, dest, dest, delete=False)
        log(f"{name}: {dest} is already there and matches the published digest (sha256 {sha})")
        return dest
    url = url or entry.url
    hand = (f"Download {url} on a machine with internet access and copy it to {dest}; rerunning "
            f"`psa-eader weights download {name} --cache-dir {cache}` then checks it")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the cache dir {cache} ({e.strerror}): pass --cache-dir DIR") from None
    tmp = cache / f".{entry.filename}.part-{os.getpid()}"
    log(f"{name}: downloading {url} -> {dest}")
    t0 = time.time()
    try:
        fetch(url, tmp)
    except InputError as e:
        tmp.unlink(missing_ok=True)
        raise InputError(f"{e}. {hand}") from None
    sha = verify(entry, tmp, f"the file downloaded from {url}")
    os.replace(tmp, dest)
    log(f"{name}: {dest} ({dest.stat().st_size / 1e6:.1f} MB in {time.time() - t0:.0f} s), sha256 {sha}")
    return dest


def list_lines(cache):
    lines = [f"cache dir: {cache}"]
    for name, e in KNOWN.items():
        digest = (f"sha256 {e.sha256}" if e.sha256 else f"sha256 {e.sha256_prefix}..." if e.sha256_prefix
                  else f"md5 {e.md5}")
        lines += [f"{name}: {e.filename}", f"    url:  {e.url}", f"    for:  {e.use}",
                  f"    set:  {e.key}={cache / e.filename}", f"    digest: {digest}"]
        if e.note:
            lines.append(f"    note: {e.note}")
    return lines


def wrap_weights_tool(argv):
    """convert / info: psa_baseline.weights' own command line."""
    from psa_baseline import weights
    if weights.main(argv) != 0:
        raise InputError(f"weights {' '.join(argv)} failed (message above)")


def main(args):
    words = list(args.set)
    if not words:
        raise InputError("weights: give an action: list, download NAME..., convert IN.params OUT.pth, "
                         "info FILE.params")
    action, rest = words[0], words[1:]
    if action == "list":
        print("\n".join(list_lines(cache_dir(args))))
    elif action == "download":
        if not rest:
            raise InputError(f"weights download: name the files ({', '.join(KNOWN)})")
        if args.url and len(rest) != 1:
            raise InputError("weights download --url: give exactly one NAME for the mirror URL")
        for name in rest:
            lookup(name)  # all names checked before any download starts
        for name in rest:
            path = download(name, cache_dir(args), url=args.url, log=lambda m: print(m, flush=True))
            print(f"  set {KNOWN[name].key}={path}")
    elif action == "convert" and len(rest) == 2:
        wrap_weights_tool(["convert", *rest])
    elif action == "info" and len(rest) == 1:
        wrap_weights_tool(["info", *rest])
    else:
        raise InputError(f"weights {' '.join(words)}: expected list, download NAME..., "
                         f"convert IN.params OUT.pth or info FILE.params")


if __name__ == "__main__":
    from .cli import stage_main
    stage_main("weights")
