"""Which process of a ``torch.distributed`` run writes the shared files: one rule for the package.

Without an initialised process group (a plain run, or torchrun before ``init_process_group``) the
process is alone and counts as rank 0.
"""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["is_distributed", "is_rank0"]


def is_distributed() -> bool:
    """True when a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_rank0() -> bool:
    """True in the process that writes checkpoints, curves and generated data (rank 0, or alone)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
