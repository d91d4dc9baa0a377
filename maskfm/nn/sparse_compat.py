"""spconv glue: lazy import, CPU fixes for spconv 2.3.8, tensor helpers, bias-free layer factories.

This is the only module in maskfm that touches spconv internals. Importing it never imports
spconv; :func:`require_spconv` does, on first use, applies the fixes below where needed, and
raises a clear ``ImportError`` when the optional dependency is missing.

Fix 1 -- backward on a machine without CUDA (:func:`ensure_cpu_backward`)
--------------------------------------------------------------------------
In the CPU-only wheel (``pip install spconv``) there is no C++ GEMM (``ops.GEMM_CPP is None``), so
``spconv/pytorch/ops.py::indice_conv_backward`` takes its Python fallback path. That path calls
``get_current_stream()`` unconditionally (2.3.8: ``ops.py`` line 1200), *before* it branches on
``features.is_cuda``; the CPU branch never uses the stream. ``get_current_stream`` lives in
``spconv/pytorch/cppcore.py`` and is ``torch.cuda.current_stream().cuda_stream``, which raises
``RuntimeError: Found no NVIDIA driver ...`` without CUDA. Net effect: forward works on CPU, every
``SubMConv3d`` / ``SparseConv3d`` / ``SparseInverseConv3d`` backward fails. (Forward, max-pool and
the C++ backward path all guard the call with ``features.is_cuda``.)

The fix rebinds one attribute, ``spconv.pytorch.ops.get_current_stream`` (``ops`` imported the
function by name, so that module global is what the failing line looks up), to a wrapper that
returns ``0`` -- the null stream, the value spconv passes itself for CPU tensors -- when
``torch.cuda.is_available()`` is false, and otherwise calls the original. It is installed only
when CUDA is unavailable, and ``torch.cuda`` is never modified. Every other use of the name in
``ops`` is on a CUDA-tensor path, unreachable without CUDA.

Fix 2 -- wrong results from a data race in the CPU scatter-add (:func:`ensure_cpu_scatter_add`)
------------------------------------------------------------------------------------------------
The CPU-only build compiles its CPU kernels with OpenMP (it ships its own ``libgomp``), and
``GatherCPU::scatter_add`` (``spconv/csrc/sparse/gather.py``, called as
``SpconvOps.scatter_add_cpu`` by ``ops.indice_conv`` and ``ops.indice_conv_backward``) keeps its
row pointers ``buf`` / ``out_ptr`` in variables shared by all threads (captured by reference in
the ``tv::kernel_1d`` lambda). With more than one thread, rows are added to the wrong output
site: measured on 2 cores, ~40 % of calls with 1500 rows x 64 channels corrupt some rows, in
float32 and float64 alike; ``torch.set_num_threads(1)`` hides it. This silently corrupts the
forward of every sparse conv and the input gradient.

The fix rebinds one attribute, ``spconv.pytorch.ops.SpconvOps``, to a Python subclass of the
pybind class that overrides only ``scatter_add_cpu`` with ``torch.Tensor.index_add_`` on
zero-copy views of the same buffers (bfloat16, which numpy cannot view, falls back to the original
kernel). Every other static method is inherited unchanged. Applied for the CPU-only build only:
CUDA builds add OpenMP to these kernels only for CPU-only builds (``GatherCPU.__init__``; read from
the source, not run) and use the C++ conv path anyway.

Both patches are idempotent, can be undone (for tests), and were checked against spconv 2.3.8.

Other CPU caveats (spconv 2.3.8)
--------------------------------
- Biased convs fail in eval mode on the CPU build: the bias is then fused into the kernel call and
  the Python path asserts ``"cpu don't support act and bias"``. All factories here use
  ``bias=False`` (followed by BatchNorm, as in OpenPCDet).
- The CPU build only supports ``ConvAlgo.Native`` (spconv picks it by default there). A CUDA build
  defaults to ``MaskImplicitGemm``, which asserts on CPU tensors; the algo is fixed at
  construction, so build CPU layers with :func:`default_algo`.
- Speed: the Native path runs a few hundred tiny OpenMP regions per conv layer. On a busy 2-core
  machine (load ~4) that is pathological (3 forward+backward passes of ``VoxelResBackBone8x``, 400
  voxels: 45 s with 2 threads vs 0.5 s after ``torch.set_num_threads(1)``, which also sets
  spconv's OpenMP thread count). Not changed here -- a process-wide choice for the caller.
- ``SparseConvTensor.dense()`` emits a torch "non-tuple sequence for multidimensional indexing"
  deprecation warning (still correct with torch 2.14).
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from spconv.pytorch import SparseConvTensor

__all__ = [
    "CHECKED_SPCONV_VERSION",
    "cpu_backward_patch_active",
    "cpu_scatter_add_patch_active",
    "default_algo",
    "ensure_cpu_backward",
    "ensure_cpu_scatter_add",
    "remove_cpu_backward_patch",
    "remove_cpu_scatter_add_patch",
    "replace_feature",
    "require_spconv",
    "sparse_conv3d",
    "sparse_inverse_conv3d",
    "sparse_tensor",
    "spconv_available",
    "subm_conv3d",
    "weight_to_torch_layout",
]

CHECKED_SPCONV_VERSION = "2.3.8"
_INSTALL_HINT = (
    'spconv is not installed. For CPU use `pip install "maskfm[lidar]"` (the CPU-only `spconv` '
    "wheel); on a GPU machine install the build matching your CUDA instead, e.g. "
    "`pip install spconv-cu121` (never both: uninstall every spconv*/cumm* package first)."
)
_PATCH_MARK = "_maskfm_unpatched"  # patched objects keep what they replaced here


@functools.cache
def _import_spconv() -> ModuleType | None:
    try:
        return importlib.import_module("spconv.pytorch")
    except ImportError:
        return None


def spconv_available() -> bool:
    """True if ``spconv.pytorch`` imports (does not apply any patch)."""
    return _import_spconv() is not None


def require_spconv() -> ModuleType:
    """Return ``spconv.pytorch`` with both CPU fixes applied where needed.

    Raises:
        ImportError: spconv is missing; the message says which package to install.
    """
    spconv = _import_spconv()
    if spconv is None:
        raise ImportError(_INSTALL_HINT)
    ensure_cpu_backward()
    ensure_cpu_scatter_add()
    return spconv


def _spconv_ops() -> Any:
    """``spconv.pytorch.ops``, typed Any: its attributes are read and patched by name."""
    if _import_spconv() is None:
        raise ImportError(_INSTALL_HINT)
    return importlib.import_module("spconv.pytorch.ops")


def _cpu_safe(original: Callable[[], int]) -> Callable[[], int]:
    @functools.wraps(original)
    def get_current_stream() -> int:
        if torch.cuda.is_available():
            return original()
        return 0  # null stream: what spconv passes itself for CPU tensors

    setattr(get_current_stream, _PATCH_MARK, original)
    return get_current_stream


def cpu_backward_patch_active() -> bool:
    """True if ``spconv.pytorch.ops.get_current_stream`` is currently the CPU-safe wrapper."""
    return hasattr(_spconv_ops().get_current_stream, _PATCH_MARK)


def ensure_cpu_backward() -> bool:
    """Make spconv's backward work on CPU tensors when CUDA is unavailable (idempotent).

    Rebinds ``spconv.pytorch.ops.get_current_stream`` (see the module docstring). Does nothing when
    CUDA is available. Returns True if the patch is active afterwards.
    """
    ops = _spconv_ops()
    current = getattr(ops, "get_current_stream", None)
    if current is None:
        warnings.warn(
            f"spconv.pytorch.ops.get_current_stream not found (checked against spconv "
            f"{CHECKED_SPCONV_VERSION}); CPU backward fix not applied",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    if hasattr(current, _PATCH_MARK):
        return True
    if torch.cuda.is_available():
        return False
    ops.get_current_stream = _cpu_safe(current)
    return True


def remove_cpu_backward_patch() -> bool:
    """Restore spconv's original ``get_current_stream`` (for tests). Returns True if one was undone."""
    ops = _spconv_ops()
    original = getattr(ops.get_current_stream, _PATCH_MARK, None)
    if original is None:
        return False
    ops.get_current_stream = original
    return True


def _race_free_spconv_ops(base: type) -> type:
    """Subclass of the pybind ``SpconvOps`` whose ``scatter_add_cpu`` is race-free."""
    from cumm import tensorview as tv

    viewable = {tv.float32, tv.float64, tv.float16}  # numpy has no bfloat16
    original = base.scatter_add_cpu

    def scatter_add_cpu(out: Any, inp: Any, inds: Any) -> None:
        """``out[inds[i]] += inp[i]`` for ``i < len(inds)``, in place, on tv tensors."""
        if out.dtype not in viewable or inp.dtype != out.dtype:
            return original(out, inp, inds)
        index = torch.from_numpy(inds.numpy_view())
        src = torch.from_numpy(inp.numpy_view())[: index.shape[0]]
        torch.from_numpy(out.numpy_view()).index_add_(0, index, src)

    attrs = {"scatter_add_cpu": staticmethod(scatter_add_cpu), _PATCH_MARK: base}
    return type("SpconvOpsRaceFreeCPU", (base,), attrs)


def cpu_scatter_add_patch_active() -> bool:
    """True if ``spconv.pytorch.ops.SpconvOps`` is the race-free subclass."""
    return _PATCH_MARK in vars(_spconv_ops().SpconvOps)


def ensure_cpu_scatter_add() -> bool:
    """Replace the racy OpenMP ``scatter_add_cpu`` seen by ``spconv.pytorch.ops`` (idempotent).

    Only for the CPU-only build (see the module docstring). Returns True if the patch is active.
    """
    ops = _spconv_ops()
    from spconv.cppconstants import CPU_ONLY_BUILD

    if cpu_scatter_add_patch_active():
        return True
    if not CPU_ONLY_BUILD or not hasattr(ops.SpconvOps, "scatter_add_cpu"):
        return False
    ops.SpconvOps = _race_free_spconv_ops(ops.SpconvOps)
    return True


def remove_cpu_scatter_add_patch() -> bool:
    """Restore spconv's own ``SpconvOps`` in ``ops`` (for tests). Returns True if one was undone."""
    ops = _spconv_ops()
    if not cpu_scatter_add_patch_active():
        return False
    ops.SpconvOps = vars(ops.SpconvOps)[_PATCH_MARK]
    return True


def default_algo(device: torch.device | str | None = None) -> Any:
    """The ``ConvAlgo`` to build layers with, or None to let spconv choose.

    ``ConvAlgo.Native`` for the CPU-only build, when CUDA is unavailable, or when ``device`` is a
    CPU device (a CUDA build's default ``MaskImplicitGemm`` cannot run CPU tensors); else None.
    """
    require_spconv()
    from spconv.core import ConvAlgo
    from spconv.cppconstants import CPU_ONLY_BUILD

    on_cpu = device is not None and torch.device(device).type == "cpu"
    if CPU_ONLY_BUILD or on_cpu or not torch.cuda.is_available():
        return ConvAlgo.Native
    return None


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    out = tuple(int(v) for v in value)
    if len(out) != 3:
        raise ValueError(f"{name} must be an int or 3 ints (z, y, x), got {value!r}")
    return out  # type: ignore[return-value]


def sparse_tensor(
    features: torch.Tensor,
    coords: torch.Tensor,
    spatial_shape: Sequence[int],
    batch_size: int,
) -> SparseConvTensor:
    """Build a checked ``SparseConvTensor``.

    Args:
        features: ``(N, C)`` float features, one row per active voxel.
        coords: ``(N, 4)`` integer ``[batch, z, y, x]`` indices (cast to int32), unique rows.
        spatial_shape: grid size ``(Z, Y, X)``.
        batch_size: number of samples ``B``; ``coords[:, 0]`` must lie in ``[0, B)``.
    """
    spconv = require_spconv()
    if features.dim() != 2:
        raise ValueError(f"features must be (N, C), got shape {tuple(features.shape)}")
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"coords must be (N, 4) [b, z, y, x], got shape {tuple(coords.shape)}")
    if coords.shape[0] != features.shape[0]:
        raise ValueError(f"{features.shape[0]} feature rows but {coords.shape[0]} coords")
    if coords.dtype.is_floating_point or coords.dtype == torch.bool:
        raise TypeError(f"coords must be an integer tensor, got {coords.dtype}")
    if coords.device != features.device:
        raise ValueError(f"coords on {coords.device} but features on {features.device}")
    shape = _triple(spatial_shape, "spatial_shape")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if coords.shape[0]:
        upper = torch.tensor([batch_size, *shape], device=coords.device)
        if bool((coords < 0).any()) or bool((coords >= upper).any()):
            raise ValueError(
                f"coords out of range for batch_size={batch_size}, spatial_shape={shape} "
                f"(min {coords.min(0).values.tolist()}, max {coords.max(0).values.tolist()})"
            )
    return spconv.SparseConvTensor(
        features, coords.to(torch.int32).contiguous(), list(shape), int(batch_size)
    )


def replace_feature(x: SparseConvTensor, features: torch.Tensor) -> SparseConvTensor:
    """Same sites as ``x`` with new ``(N, C')`` features (``x`` is not modified)."""
    if features.dim() != 2 or features.shape[0] != x.features.shape[0]:
        raise ValueError(
            f"features must be ({x.features.shape[0]}, C'), got shape {tuple(features.shape)}"
        )
    return x.replace_feature(features)


def weight_to_torch_layout(weight: torch.Tensor) -> torch.Tensor:
    """spconv >= 2.2 conv weight ``[out, kz, ky, kx, in]`` (KRSC) -> ``[out, in, kz, ky, kx]``.

    The result is the ``weight`` of the equivalent ``torch.nn.functional.conv3d``. For
    ``SparseInverseConv3d`` take ``.transpose(0, 1)`` of it to get ``conv_transpose3d``'s
    ``[in, out, kz, ky, kx]``.
    """
    if weight.dim() != 5:
        raise ValueError(f"expected a 5-D spconv 3-D conv weight, got shape {tuple(weight.shape)}")
    return weight.permute(0, 4, 1, 2, 3)


def subm_conv3d(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int] = 3,
    indice_key: str | None = None,
    algo: Any = "auto",
) -> torch.nn.Module:
    """Bias-free ``SubMConv3d``: ``(N, C_in)`` -> ``(N, C_out)`` on the same sites.

    ``algo="auto"`` means :func:`default_algo`. Layers sharing ``indice_key`` reuse one rulebook.
    """
    spconv = require_spconv()
    return spconv.SubMConv3d(
        in_channels,
        out_channels,
        kernel_size,
        bias=False,
        indice_key=indice_key,
        algo=default_algo() if algo == "auto" else algo,
    )


def sparse_conv3d(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    indice_key: str | None = None,
    algo: Any = "auto",
) -> torch.nn.Module:
    """Bias-free strided ``SparseConv3d``; output grid ``(D + 2p - k) // s + 1`` per axis.

    Give it an ``indice_key`` to allow a later :func:`sparse_inverse_conv3d` to undo it.
    """
    spconv = require_spconv()
    return spconv.SparseConv3d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=padding,
        bias=False,
        indice_key=indice_key,
        algo=default_algo() if algo == "auto" else algo,
    )


def sparse_inverse_conv3d(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    indice_key: str,
    algo: Any = "auto",
) -> torch.nn.Module:
    """Bias-free ``SparseInverseConv3d``: maps back onto the input sites of the strided conv that
    was built with the same ``indice_key`` (same kernel size)."""
    spconv = require_spconv()
    return spconv.SparseInverseConv3d(
        in_channels,
        out_channels,
        kernel_size,
        indice_key=indice_key,
        bias=False,
        algo=default_algo() if algo == "auto" else algo,
    )
