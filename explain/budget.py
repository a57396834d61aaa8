"""The memory budget: how much memory the parts of a job that its options size may take.

Options that scale memory (a batch size, a grid's size, a mosaic's cell size) are checked against
the budget before any work starts; a job over it is refused with an :class:`OptionError` that
gives the estimate, the budget and what to change. Estimates count the large arrays the options
decide, not the interpreter or the model's weights.

The budget is ``EXPLAIN_MEMORY_BUDGET`` when set (bytes, or a number with a K, M, G or T suffix
in powers of 1024: ``16G``); otherwise 4 GiB or half the machine's memory, whichever is
smaller, and on a CUDA device half the device's memory.
"""

from __future__ import annotations

import os
import re

import torch

from explain.errors import OptionError

DEFAULT_BUDGET = 4 * 2**30
BUDGET_ENV = "EXPLAIN_MEMORY_BUDGET"
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def format_bytes(n: float) -> str:
    """``1536`` → ``"1.5 KiB"``: bytes in the largest binary unit that keeps the number ≥ 1."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def memory_budget(device: torch.device | None = None) -> int:
    """The budget in bytes for work on ``device`` (None: host memory); see the module docstring."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if text:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", text, re.IGNORECASE)
        if match is None or float(match[1]) <= 0:
            raise OptionError(f"{BUDGET_ENV}={text!r} is not a memory size; use bytes or a "
                              "number with K, M, G or T, e.g. 16G")
        return int(float(match[1]) * UNITS[match[2].upper()])
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory // 2
    try:
        machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
        return DEFAULT_BUDGET
    return min(DEFAULT_BUDGET, machine // 2)


def check_memory(estimate: int, what: str, advice: str,
                 device: torch.device | None = None) -> None:
    """Refuse a job whose ``estimate`` (bytes) is over the budget, before it starts.

    ``what`` names the job ("a 1000x1000 grid of 64-px cells"), ``advice`` the way out ("use a
    smaller --size or --cell-px").
    """
    budget = memory_budget(device)
    if estimate > budget:
        raise OptionError(f"{what} would need about {format_bytes(estimate)}, over the memory "
                          f"budget of {format_bytes(budget)}: {advice}, or raise the budget with "
                          f"{BUDGET_ENV} (e.g. {BUDGET_ENV}=16G)")
