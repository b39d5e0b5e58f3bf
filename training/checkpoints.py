"""What every checkpoint module shares: the error, the quantisation marker, atomic directory writes.

At the bottom of training/: it imports nothing from it, so the loaders (models, quantized) and the
writers (models, optimize) all build on it without import cycles.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

# Written by training.optimize into int8 / bitsandbytes checkpoints, which load through training.quantized.
QUANTIZED_MARKER = "quantization.json"


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, incomplete or unreadable."""


class atomic_dir:
    """Context manager: yields a temp dir beside `target`, renamed to `target` on success.

    A crash halfway leaves no half-written checkpoint that a later call would take as done.
    """

    def __init__(self, target: Path) -> None:
        self.target = Path(target)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}-", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.target.exists():
            if any(self.target.iterdir()):
                shutil.rmtree(self.tmp, ignore_errors=True)  # someone else finished first
                return
            self.target.rmdir()
        self.tmp.chmod(0o755)  # mkdtemp makes it private
        self.tmp.rename(self.target)
