"""Atomic writes: a file either exists complete or not at all."""
import io
import json
import os
import pickle
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def current_umask():
    """The process umask, read without changing it where /proc allows (os.umask sets as it reads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs get the mode any new file gets
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path, data: bytes):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a crash never leaves a torn file under the name


PNG_END = b"IEND\xaeB`\x82"


def looks_complete(path):
    """Whether an output file a resume would skip is whole, read cheaply: an .npy's header and, for a
    pickled object (PSA's CAM dicts), the pickle's final STOP byte; a PNG's signature and its IEND chunk.
    Other files: not empty."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return False
        with open(path, "rb") as f:
            if path.suffix == ".npy":
                version = np.lib.format.read_magic(f)
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read is None:  # a newer format version: not inspected
                    return True
                shape, _, dtype = read(f, max_header_size=1 << 20)
                if dtype.hasobject:
                    f.seek(-1, os.SEEK_END)
                    return f.read(1) == b"."
                return size - f.tell() >= int(np.prod(shape)) * dtype.itemsize
            if path.suffix == ".png":
                if f.read(8) != b"\x89PNG\r\n\x1a\n":
                    return False
                f.seek(-8, os.SEEK_END)
                return f.read(8) == PNG_END
        return True
    except (OSError, ValueError):
        return False


def write_text(path, text: str):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_npy(path, obj):
    """np.save of an array or a pickled object (PSA's CAM dicts), atomically."""
    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    write_bytes(path, buf.getvalue())


def save_torch(path, obj):
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def save_pickle(path, obj):
    write_bytes(path, pickle.dumps(obj))
