"""The work dir: checked for writing before anything starts, and held by one run per variant.

One run at a time per variant of a work dir: the first holds <work>/.psa-eader.<variant>.lock (flock, released
when the process ends, crash included); the baseline and EADER write folders of their own, so they may run side
by side (`pipeline --jobs`), and the summaries they share are updated under a lock of their own (report.py). A
`--shard i/n` job holds its own lock, .psa-eader.<variant>.shard-i-of-n.lock.
"""
import fcntl
import os
import re
import socket
import tempfile
import time
from pathlib import Path

from psa_baseline.errors import InputError

# a stage folder's sibling <stage>.replaced holds an earlier config's finished results while a rerun redoes the
# stage (Stage.replaced_dir); readers of a variant's stage folders skip it
REPLACED_SUFFIX = ".replaced"


def prepare_work_dir(work_dir):
    """Create the work dir and check that it takes files; otherwise an InputError with the path and the fix."""
    p = Path(work_dir)
    fix = "choose another --work-dir (or work_dir=...)"
    try:
        p.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((q for q in [p, *p.parents] if q.exists() and not q.is_dir()), p)
        raise InputError(f"work dir {p}: {blocker} is a file, not a folder; {fix}") from None
    except OSError as e:
        raise InputError(f"work dir {p} cannot be created ({e.strerror}); {fix}, or create it with "
                         f"write permission for this user") from None
    try:  # an existing folder may still be read-only (permissions, read-only mount)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"work dir {p} is not writable ({e.strerror}); {fix}, or give this user write "
                         f"permission on it") from None
    return p


LOCK_NAME = ".psa-eader.lock"
_locks = {}  # resolved lock file path -> open lock file; held until this process ends


def lock_name(shard=None, variant=None):
    """The run's lock file: one per variant (its stages write only <work>/<variant>/), and a `--shard i/n`
    job has its own, so the n jobs of one stage can run together (each writes only its own images)."""
    base = LOCK_NAME[:-len(".lock")] + (f".{re.sub(r'[^A-Za-z0-9_.+=-]', '_', variant)}" if variant else "")
    return f"{base}.lock" if shard is None else f"{base}.shard-{shard[0]}-of-{shard[1]}.lock"


def lock_work_dir(work_dir, name=LOCK_NAME):
    """Hold <work_dir>/<name> (lock_name) for the rest of this process, or stop at once if another process
    holds it: two runs of one variant on one work dir would run the same stages and resume each other's
    checkpoints."""
    path = Path(work_dir) / name
    key = str(Path(work_dir).resolve() / name)
    held = _locks.get(key)
    if held is not None:  # ours already, unless the folder was removed and made anew since
        try:
            if os.fstat(held.fileno()).st_ino == os.stat(path).st_ino:
                return
        except OSError:
            pass
        held.close()
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        who = f.read().strip() or "another process"
        f.close()
        raise InputError(f"work dir {work_dir} is in use by another psa-eader run ({who}; lock file {path}); "
                         f"wait until it ends, or give this run another --work-dir") from None
    except OSError as e:  # e.g. a network file system without locks
        f.close()
        raise InputError(f"work dir {work_dir}: cannot lock {path} ({e.strerror}); use a work dir on a local "
                         f"file system") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    _locks[key] = f
