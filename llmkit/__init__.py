"""llmkit: exact, streaming tools for the lifecycle of Chinese LLaMA-family weights."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# OpenMP threads that spin after every torch op take a core from the threads that read and write (on
# 2 cores a merge ran 1.4x slower). Idle OpenMP threads sleep instead, unless the user chose otherwise;
# it only takes effect when llmkit is imported before torch (as by the CLI).
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
