"""llmkit: exact, streaming tools for the lifecycle of Chinese LLaMA-family weights."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# Two settings torch reads when it is loaded, so they only take effect when llmkit is imported first (as
# by the CLI); a value the user set wins. OpenMP threads that spin after every torch op take a core from
# the threads that read and write (on 2 cores a merge ran 1.4x slower): idle ones sleep instead. And
# torch's CPU tensors of 2 MiB and more are backed by huge pages: a streaming job allocates a fresh
# tensor per weight, and faulting in 4 KiB pages cost a third of a whole-model recover's CPU time.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
