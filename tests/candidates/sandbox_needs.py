"""A correct candidate that needs what an ordinary program may: /dev/null for writing, a
child process with its output discarded, and a writable compiler cache (torch.compile's,
Triton's and JAX's through softcheck's jaxsetup, at the paths the sandbox names).  It must pass inside the sandbox while the host's
files stay read-only to it (tests/test_trust.py)."""

import os
import subprocess
import sys

import numpy as np


def grad(logits, target):
    with open("/dev/null", "wb") as f:          # EROFS before: /dev was read-only
        f.write(b"discarded")
    subprocess.run([sys.executable, "-c", "pass"], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "SOFTCHECK_CACHE_DIR"):
        os.makedirs(os.path.join(os.environ[var], "probe"), exist_ok=True)
    try:
        open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "written"), "w")
    except OSError:
        pass
    else:
        raise RuntimeError("wrote beside its own file: the host is writable")
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    return (p / len(target)).astype(logits.dtype)
