"""Process-wide settings: the device and dtypes, and third-party output, decided here only.

The entry point (:func:`vlm_cli.cli.run`) calls :func:`quiet_third_party` once, before any
third-party package is imported; library code never changes their global state (logging levels,
progress bars). Every command and library function that needs a device or a dtype asks
:func:`pick_device` / :func:`resolve_dtype`. Importing this module imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any


def quiet_third_party() -> None:
    """Turn off transformers' and huggingface_hub's own tqdm progress bars ("Loading weights",
    "Writing model shards", "Fetching N files"): progress is ours
    (:func:`vlm_cli.console.progress_bar`), on stderr, readable in a log.

    Sets ``HF_HUB_DISABLE_PROGRESS_BARS=1``, which huggingface_hub reads at import and
    transformers follows (``transformers.utils.logging``); packages already imported are switched
    off directly. Cheap: imports nothing.
    """
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


@contextlib.contextmanager
def transformers_errors_only() -> Iterator[None]:
    """Within the block, transformers logs errors only (restored after): for loading a released
    checkpoint whose files make transformers warn about what we never use (a talker's config, a
    generation config's sampling flags), and accelerate's big-model loading does not announce
    the modules it leaves on disk on purpose (vlm's towers until a feature is missing). Raises
    nothing of its own."""
    import logging

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    big_modeling = logging.getLogger("accelerate.big_modeling")
    saved = big_modeling.level
    hf_logging.set_verbosity_error()
    big_modeling.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        big_modeling.setLevel(saved)


#: The weight dtypes a recipe, ``--dtype`` or an encoder may name (torch attribute names).
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def pick_device(device: str = "auto") -> str:
    """The torch device to run on: ``auto`` is ``cuda`` when a CUDA GPU is visible, else
    ``cpu``; any other value is returned as given (``cpu``, ``cuda:1``)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str) -> Any:
    """The torch dtype for ``name`` (one of :data:`DTYPE_NAMES`, or ``auto``) on ``device``.

    ``auto`` is bf16 on a GPU that supports it, else fp16 on a GPU, else fp32 (CPU): the choice
    of transformers' own ``torch_dtype="auto"`` for Llama-family checkpoints on Ampere and later.

    Raises:
        ValueError: an unknown dtype name.
    """
    import torch

    if name == "auto":
        if device.startswith("cuda") and torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; expected auto or one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def training_dtype(name: str, device: str, *, trained: bool) -> Any:
    """The LLM's weight dtype in a training stage: the one place training decides it.

    A trained LLM keeps fp32 master weights (its forward pass runs under the accelerator's
    autocast); a frozen one (LoRA included) is held in ``name`` on ``device``
    (:func:`resolve_dtype`: ``auto`` is bf16 on GPUs that support it, else fp16 on a GPU, fp32
    on CPU).

    Args:
        name: the recipe's ``model.llm.dtype`` (a run's), or ``auto`` for a checkpoint of
            another family.

    Raises:
        ValueError: an unknown dtype name.
    """
    if trained:
        import torch

        return torch.float32
    return resolve_dtype(name, device)


#: safetensors dtype names -> torch attribute names.
_STORED = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def choose_dtype(name: str, device: str, *, stored_bytes: int = 0,
                 stored: str | None = None) -> Any:
    """The weights' dtype for ``--dtype NAME`` (:data:`DTYPE_NAMES` or ``auto``) on ``device``:
    the one place inference decides it.

    ``auto``: on a GPU, the family's choice (:func:`resolve_dtype`: bf16 where supported, the
    dtype released checkpoints are stored in); on CPU, fp32 where its fp32 copy fits comfortably
    (``stored_bytes`` in fp32, at most half the memory available: fp32 matmuls run ~7x faster
    than bf16 ones on CPUs without bf16 units), else the checkpoint's ``stored`` dtype (said on
    stderr): the only one that fits.

    Args:
        stored_bytes: the weights' size as stored (:func:`vlm_cli.weights.stored_weights`).
        stored: their safetensors dtype name (``BF16``, ``F32``, ...), or None.

    Returns:
        A torch dtype, or None for the family's own choice.

    Raises:
        ValueError: an unknown dtype name.
    """
    if name != "auto":
        return resolve_dtype(name, device)
    if not device.startswith("cpu") or stored not in _STORED:
        return None
    import torch

    element = torch.empty(0, dtype=getattr(torch, _STORED[stored])).element_size()
    fp32_bytes = stored_bytes * 4 // element
    available = available_memory()
    if available is None or fp32_bytes <= available // 2:
        return None
    from vlm_cli import console

    console.info(f"--dtype auto: {fp32_bytes / 2**30:.1f} GiB of weights in fp32 would not fit "
                 f"comfortably in the {available / 2**30:.1f} GiB available; loading them as "
                 f"stored ({_STORED[stored]})")
    return getattr(torch, _STORED[stored])


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable`` of ``/proc/meminfo``),
    or None where that cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


#: LLMs this narrow (hidden size, in units) run their CPU ops on one thread: see
#: :func:`cpu_threads_for_width`.
NARROW_LLM_WIDTH = 256


def cpu_threads_for_width(hidden_size: int, device: str) -> int | None:
    """Set torch's intra-op threads for running a model of ``hidden_size`` on ``device``, and
    return the count set (None: nothing changed).

    On CPU, a model at most :data:`NARROW_LLM_WIDTH` wide (the toy-av demo: 64) gets one thread:
    its ops take microseconds, so handing each to a thread pool costs more than it saves, and
    much more on a machine other processes keep busy (OpenMP threads wait for a core at every
    op): 20 cached clips through ``vlm ask`` took 7.0 s with one thread and 9.9-12.6 s with two
    on a shared 2-core machine (bench/ask_startup.py). Wider models, GPUs, and a thread count
    the user chose (``OMP_NUM_THREADS``) are left alone.
    """
    if not device.startswith("cpu") or hidden_size > NARROW_LLM_WIDTH \
            or "OMP_NUM_THREADS" in os.environ:
        return None
    import torch

    torch.set_num_threads(1)
    return 1
