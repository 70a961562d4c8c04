"""Sharing a stage's work out: torchrun's ranks (one process group per run, rank 0 writes the shared files)
and `--shard i/n` jobs (separate processes or machines splitting one stage's images)."""
import contextlib
import datetime
import gc
import os

import torch

from psa_baseline.errors import InputError


_solo = []  # non-empty while this rank works alone (see solo())


def _dist():
    return not _solo and torch.distributed.is_available() and torch.distributed.is_initialized()


@contextlib.contextmanager
def solo():
    """Rank 0 alone does the block as a one-process run (rank 0 of world 1); the other ranks skip it and
    all meet after it. For the pipeline's steps that need no sharing out (demo data, scoring)."""
    lead = rank() == 0
    if lead:
        _solo.append(True)
    try:
        yield lead
    finally:
        if lead:
            _solo.pop()
        barrier()


def rank():
    return torch.distributed.get_rank() if _dist() else 0


def world_size():
    return torch.distributed.get_world_size() if _dist() else 1


def barrier():
    if _dist():
        torch.distributed.barrier()


def launched_world_size():
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


BACKEND_ENV = "PSA_EADER_DIST_BACKEND"


def dist_backend(cuda):
    """NCCL on CUDA, gloo on the CPU; PSA_EADER_DIST_BACKEND=gloo puts CUDA ranks on gloo, which lets several
    ranks share one GPU (NCCL refuses that: "Duplicate GPU detected"): slower, for checking the multi-process
    path on a one-GPU machine."""
    name = os.environ.get(BACKEND_ENV, "").strip().lower() or ("nccl" if cuda else "gloo")
    if name not in ("nccl", "gloo"):
        raise InputError(f"{BACKEND_ENV}={name!r}: use nccl or gloo (or leave it unset)")
    if name == "nccl" and not cuda:
        raise InputError(f"{BACKEND_ENV}=nccl needs --device cuda: unset it for a CPU run")
    return name


def local_gpu():
    """This rank's GPU: torchrun's LOCAL_RANK. With more ranks than GPUs only gloo can share them."""
    local, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local < count:
        return local
    if dist_backend(True) == "gloo":
        return local % count
    raise InputError(f"process {local} of this machine has no GPU of its own ({count} here): start at most "
                     f"{count} processes per machine (--nproc {count}), or set {BACKEND_ENV}=gloo to share "
                     "GPUs (slow; NCCL refuses two ranks on one GPU)")


def init_distributed(device_name):
    """Join torchrun's process group once per process: NCCL on CUDA (each rank on cuda:LOCAL_RANK),
    gloo on CPU (dist_backend). Nothing to do outside torchrun or with one process. NCCL with two GPUs has
    not run yet: the CI runs gloo on the CPU, a one-GPU machine ran gloo on CUDA (docs/notes/gpu.md)."""
    if launched_world_size() <= 1 or _dist():
        return
    cuda = str(device_name).startswith("cuda")
    backend = dist_backend(cuda)
    if cuda:
        if not torch.cuda.is_available():
            raise InputError(f"device '{device_name}' asked for, but CUDA is not available here: use --device cpu")
        torch.cuda.set_device(local_gpu())
    # long: the other ranks wait at a barrier while rank 0 alone scores (eval-cam on VOC val takes
    # minutes) and NCCL's default would give up after 10
    torch.distributed.init_process_group(backend, timeout=datetime.timedelta(hours=2))


def end_distributed(wait=False):
    """Leave the process group. wait (a clean end): every rank first waits for the others, because a gloo
    rank that tears the group down while another still talks to it can abort that one (SIGABRT, "terminate
    called without an active exception", seen in CI). Never wait after an error: the others may not come."""
    if _dist():
        # DDP models of the finished stages sit in reference cycles until a collection: one still alive when
        # its gloo group is destroyed aborted the process at exit now and then (2-3 in 40-60 two-process runs)
        gc.collect()
        if wait:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def process_group(device_name):
    """torchrun's process group (init_distributed) for the body; left with a wait (end_distributed) only if
    the body ended cleanly or with an error that every rank raised (agree)."""
    init_distributed(device_name)
    clean = False
    try:
        yield
        clean = True
    except InputError as e:
        clean = getattr(e, "on_every_rank", False)
        raise
    finally:
        end_distributed(wait=clean)


def resolve_device(name):
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device '{name}' asked for, but CUDA is not available here: use --device cpu")
    if name == "cuda" and _dist():  # one GPU per rank: torchrun's LOCAL_RANK picks it
        return torch.device("cuda", local_gpu())
    return torch.device(name)


def agree(error):
    """Raise on every rank if rank 0 found `error` (an InputError or None): the other ranks of a run
    would otherwise wait forever for a rank 0 that has stopped."""
    if _dist():
        box = [error]
        torch.distributed.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        e = InputError(str(error))
        e.on_every_rank = True  # process_group may wait for the others: they raise it too
        raise e


def from_rank0(value):
    """Rank 0's `value` on every rank (an object broadcast); `value` itself with one process."""
    if not _dist():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def add_shard_argument(p):
    p.add_argument("--shard", metavar="I/N", help="do only shard I of N of the images (0 <= I < N): for N "
                   "separate jobs (other machines) sharing one work dir; each skips what is on disk, and "
                   "the last to finish writes DONE.json")


def finish_when_complete(st, missing, **outputs):
    """After this process's share of an inference stage: DONE.json if no output is missing any more
    (missing() -> the ids without output); otherwise another --shard job still has images to do and
    the last one to finish writes it. Returns whether the stage is done."""
    barrier()
    left = from_rank0(missing() if rank() == 0 else None)  # one answer for all ranks of this run
    if left:
        st.log.info("this share is done; %d images of other shards are still missing (e.g. %s): the last "
                    "shard to finish writes %s", len(left), left[0], st.done_file.name)
        return False
    st.finish(**outputs)
    return True


def parse_shard(text):
    """'i/n' (0 <= i < n) -> (i, n); None -> None. For separate jobs that split one stage's images."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise InputError(f"--shard {text}: expected i/n with 0 <= i < n, e.g. 0/4")
    return i, n


def my_share(ids, shard=None):
    """This process's part of `ids`: shard i of n (separate jobs), split again over the ranks of a
    torchrun. Every id belongs to exactly one (shard, rank)."""
    i, n = shard or (0, 1)
    parts = n * world_size()
    return list(ids)[i * world_size() + rank()::parts]
