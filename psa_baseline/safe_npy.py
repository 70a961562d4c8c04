"""Reading PSA's pickled .npy dicts from other people's folders without running their code.

PSA's formats are np.save of a dict: CAM files `<id>.npy` ({class index: HxW float}) and cls_labels.npy
({image id: float[20]}). Such a file is a pickle, and np.load(allow_pickle=True) does whatever a pickle
asks, e.g. run a shell command. Here the pickle is read by an unpickler that can only rebuild numpy
arrays, dtypes and scalars, and the result must be a dict of int (or str) keys to numeric arrays.
"""
import pickle
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from .errors import InputError

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1
    from numpy.core import multiarray as _multiarray


def _latin1_bytes(text, encoding="latin1"):
    """Protocol-2 pickles (PSA's cls_labels.npy) store an array's bytes as _codecs.encode(str, 'latin1')."""
    if not isinstance(text, str) or str(encoding).replace("-", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


# Everything a pickled plain ndarray needs; numpy 1 writes numpy.core, numpy 2 numpy._core.
ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    ALLOWED[(_mod, "_reconstruct")] = _multiarray._reconstruct
    ALLOWED[(_mod, "scalar")] = _multiarray.scalar  # numpy scalars, e.g. an np.int64 dict key


class Refused(pickle.UnpicklingError):
    """The pickle asked for something a plain numpy array does not need."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise Refused(f"{module}.{name}") from None


def _describe(obj):
    if isinstance(obj, np.ndarray):
        return f"an array of shape {obj.shape} ({obj.dtype})"
    return f"a {type(obj).__name__}"


def load_npy(path, what="file", fix="regenerate it"):
    """np.load of `path` with pickles restricted to numpy arrays; a 0-d object array is unwrapped
    (np.save of a dict gives one). Any problem -> InputError naming `what` and `path`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = npformat.read_magic(f)
            read_header = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}
            if version not in read_header:
                raise ValueError(f".npy format version {version} is not supported here")
            _, _, dtype = read_header[version](f)
            if dtype.hasobject:
                obj = NumpyOnlyUnpickler(f, encoding="latin1").load()
            else:
                f.seek(0)
                obj = npformat.read_array(f, allow_pickle=False)
    except Refused as e:
        raise InputError(f"{what} {path} asks to load '{e}', which a numpy array does not need; refused, "
                         f"because loading it could run code. Use only files saved by np.save of a dict of "
                         f"numpy arrays, or {fix}") from None
    except Exception as e:
        raise InputError(f"{what} {path} is unreadable ({e}); {fix}") from e
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0:
        obj = obj.item()
    return obj


def load_dict(path, what, key_type, expect, fix="regenerate it"):
    """A pickled dict {key_type: numeric ndarray} from `path` (see load_npy). key_type: int (class
    indices; numpy integers accepted, bools not) or str (image ids). `expect` describes the format."""
    obj = load_npy(path, what, fix)
    if not isinstance(obj, dict):
        raise InputError(f"{what} {path} holds {_describe(obj)}, not a dict {expect}; {fix}")
    out = {}
    for key, value in obj.items():
        if key_type is int:
            ok = isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_))
        else:
            ok = isinstance(key, key_type)
        if not ok:
            raise InputError(f"{what} {path} has key {key!r}; expected a dict {expect}; {fix}")
        if not (isinstance(value, np.ndarray) and value.dtype.kind in "biuf"):
            raise InputError(f"{what} {path}: the value of key {key!r} is {_describe(value)}, not a numeric "
                             f"array; expected a dict {expect}; {fix}")
        out[int(key) if key_type is int else key] = value
    return out
