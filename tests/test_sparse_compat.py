"""spconv layers on CPU vs dense PyTorch references (forward + backward), and the two CPU fixes.

Every layer the sparse backbones use is checked against ``torch.nn.functional.conv3d`` /
``conv_transpose3d`` with the same weights, in float64. Gradients are compared too: spconv's
backward only runs on a CUDA-less machine because of ``ensure_cpu_backward``, and outputs are only
right with several OpenMP threads because of ``ensure_cpu_scatter_add``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip(
    "spconv.pytorch", reason='spconv not installed (CPU: pip install "maskfm[lidar]")'
)

from maskfm.nn import sparse_compat as sc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAPE = (5, 6, 7)  # (z, y, x)
BATCH = 2
C_IN, C_OUT = 3, 4
DTYPE = torch.float64
TOL = {"atol": 1e-5, "rtol": 1e-5}
# name -> (spatial shape, voxels drawn, C_in, C_out): a small grid, and a wider one on which
# spconv's unpatched OpenMP scatter-add goes wrong almost every call (spconv runs with 2 threads)
GRIDS = {"small": (SHAPE, 48, C_IN, C_OUT), "wide": ((8, 16, 16), 1500, 16, 32)}


# ----------------------------------------------------------------------------------- helpers


@contextmanager
def num_threads(n: int):
    """Temporarily set torch's (and, with it, spconv's OpenMP) thread count."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _single_threaded():
    """spconv's CPU path runs hundreds of tiny parallel regions per conv; on a busy 2-core box
    that makes this file ~50x slower. Tests that need threads open ``num_threads(2)`` inside."""
    with num_threads(1):
        yield


def random_grid(seed: int = 0, n: int = 48, shape=SHAPE, c_in: int = C_IN):
    """``(features (N, c_in) float64, coords (N, 4) int32 [b, z, y, x])``, unique sites."""
    g = torch.Generator().manual_seed(seed)
    upper = torch.tensor([BATCH, *shape])
    coords = (torch.rand(n, 4, generator=g) * upper).long()
    coords = torch.unique(coords, dim=0)
    coords = coords[torch.randperm(len(coords), generator=g)]  # spconv must not need sorted input
    feats = torch.randn(len(coords), c_in, generator=g, dtype=DTYPE)
    return feats, coords.int()


def densify(feats: torch.Tensor, coords: torch.Tensor, shape=SHAPE) -> torch.Tensor:
    """Differentiable ``(N, C)`` + coords -> ``(B, C, Z, Y, X)``."""
    c = coords.long()
    dense = feats.new_zeros(BATCH, *shape, feats.shape[1])
    dense = dense.index_put((c[:, 0], c[:, 1], c[:, 2], c[:, 3]), feats)
    return dense.permute(0, 4, 1, 2, 3)


def gather(dense: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``(B, C, Z, Y, X)`` at ``coords`` -> ``(N, C)``."""
    c = coords.long()
    return dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]


def site_set(coords: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r) for r in coords.tolist()}


def randomize(conv: torch.nn.Module, seed: int) -> torch.nn.Module:
    """float64 copy of ``conv`` with N(0, 1) weights."""
    conv = conv.to(DTYPE)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=DTYPE))
    return conv


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


# ----------------------------------------------------------------------- layers vs dense conv


def test_dense_matches_manual_densify():
    feats, coords = random_grid()
    x = sc.sparse_tensor(feats, coords, SHAPE, BATCH)
    torch.testing.assert_close(x.dense(), densify(feats, coords, SHAPE))


@pytest.mark.parametrize("grid", list(GRIDS))
def test_subm_conv3d_matches_dense_conv_forward_and_backward(grid):
    shape, n, c_in, c_out = GRIDS[grid]
    feats, coords = random_grid(n=n, shape=shape, c_in=c_in)
    conv = randomize(sc.subm_conv3d(c_in, c_out, 3, indice_key="subm1"), seed=2)
    f_sp = leaf(feats)
    with num_threads(2):  # several OpenMP threads: what the scatter-add race needs
        y = conv(sc.sparse_tensor(f_sp, coords, shape, BATCH))
    assert torch.equal(y.indices, coords)  # SubM keeps the input sites, in order
    assert list(y.spatial_shape) == list(shape)

    f_ref, w_ref = leaf(feats), leaf(sc.weight_to_torch_layout(conv.weight))
    ref = gather(F.conv3d(densify(f_ref, coords, shape), w_ref, padding=1), coords)
    torch.testing.assert_close(y.features, ref, **TOL)
    # dense weight grad is [out, in, kz, ky, kx]; bring spconv's to the same layout
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    with num_threads(2):
        df_sp, dw_sp = torch.autograd.grad(y.features, [f_sp, conv.weight], g)
    df_ref, dw_ref = torch.autograd.grad(ref, [f_ref, w_ref], g)
    torch.testing.assert_close(df_sp, df_ref, **TOL)
    torch.testing.assert_close(sc.weight_to_torch_layout(dw_sp), dw_ref, **TOL)


STRIDED = {
    "k3_s2_p1": dict(kernel_size=3, stride=2, padding=1),
    "k3_s2_p011": dict(kernel_size=3, stride=2, padding=(0, 1, 1)),
    "k311_s211_p0": dict(kernel_size=(3, 1, 1), stride=(2, 1, 1), padding=0),
}


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("cfg", list(STRIDED.values()), ids=list(STRIDED))
def test_sparse_conv3d_matches_dense_conv(cfg, grid):
    shape, n, c_in, c_out = GRIDS[grid]
    feats, coords = random_grid(seed=4, n=n, shape=shape, c_in=c_in)
    conv = randomize(sc.sparse_conv3d(c_in, c_out, indice_key="down", **cfg), seed=5)
    f_sp = leaf(feats)
    with num_threads(2):
        y = conv(sc.sparse_tensor(f_sp, coords, shape, BATCH))

    dense_kw = dict(stride=cfg["stride"], padding=cfg["padding"])
    f_ref, w_ref = leaf(feats), leaf(sc.weight_to_torch_layout(conv.weight))
    dense_out = F.conv3d(densify(f_ref, coords, shape), w_ref, **dense_kw)
    assert list(y.spatial_shape) == list(dense_out.shape[2:])

    # output sites = every site whose receptive field touches an active input
    occupancy = densify(torch.ones(len(coords), 1, dtype=DTYPE), coords, shape)
    ones_kernel = torch.ones(1, 1, *w_ref.shape[2:], dtype=DTYPE)
    touched = F.conv3d(occupancy, ones_kernel, **dense_kw)[:, 0] > 0
    expected_sites = {tuple(r) for r in touched.nonzero().tolist()}
    assert len(y.indices) == len(expected_sites)
    assert site_set(y.indices) == expected_sites

    ref = gather(dense_out, y.indices)
    torch.testing.assert_close(y.features, ref, **TOL)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(6), dtype=DTYPE)
    with num_threads(2):
        df_sp, dw_sp = torch.autograd.grad(y.features, [f_sp, conv.weight], g)
    df_ref, dw_ref = torch.autograd.grad(ref, [f_ref, w_ref], g)
    torch.testing.assert_close(df_sp, df_ref, **TOL)
    torch.testing.assert_close(sc.weight_to_torch_layout(dw_sp), dw_ref, **TOL)


def test_sparse_inverse_conv3d_matches_conv_transpose3d():
    feats, coords = random_grid(seed=7)
    down = randomize(sc.sparse_conv3d(C_IN, C_OUT, 3, stride=2, padding=1, indice_key="d2"), 8)
    inv = randomize(sc.sparse_inverse_conv3d(C_OUT, C_IN, 3, indice_key="d2"), seed=9)
    y = down(sc.sparse_tensor(feats, coords, SHAPE, BATCH))

    y_sp = leaf(y.features)
    with num_threads(2):
        z = inv(sc.replace_feature(y, y_sp))
    assert torch.equal(z.indices, coords)  # back onto the strided conv's input sites
    assert list(z.spatial_shape) == list(SHAPE)

    # conv_transpose3d weight is [in, out, k...] = torch-layout weight with in/out swapped
    y_ref = leaf(y.features)
    w_ref = leaf(sc.weight_to_torch_layout(inv.weight).transpose(0, 1))
    small = list(y.spatial_shape)
    natural = [(s - 1) * 2 - 2 + 3 for s in small]
    out_pad = [big - nat for big, nat in zip(SHAPE, natural, strict=True)]
    dense_out = F.conv_transpose3d(
        densify(y_ref, y.indices, small), w_ref, stride=2, padding=1, output_padding=out_pad
    )
    assert tuple(dense_out.shape[2:]) == SHAPE
    ref = gather(dense_out, coords)
    torch.testing.assert_close(z.features, ref, **TOL)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(10), dtype=DTYPE)
    with num_threads(2):
        dy_sp, dw_sp = torch.autograd.grad(z.features, [y_sp, inv.weight], g)
    dy_ref, dw_ref = torch.autograd.grad(ref, [y_ref, w_ref], g)
    torch.testing.assert_close(dy_sp, dy_ref, **TOL)
    torch.testing.assert_close(sc.weight_to_torch_layout(dw_sp).transpose(0, 1), dw_ref, **TOL)


def test_two_layer_net_backward_on_cpu():
    feats, coords = random_grid(seed=11)
    spconv = sc.require_spconv()
    net = spconv.SparseSequential(
        sc.subm_conv3d(C_IN, C_OUT, 3, indice_key="s1"),
        sc.sparse_conv3d(C_OUT, C_OUT, 3, stride=2, padding=1),
    ).to(DTYPE)
    f = leaf(feats)
    net(sc.sparse_tensor(f, coords, SHAPE, BATCH)).features.square().sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


# --------------------------------------------------------------------------- the compat fix


UNPATCHED_SCRIPT = textwrap.dedent(
    """
    import traceback
    import torch
    import spconv.pytorch as spconv
    from maskfm.nn import sparse_compat as sc

    def run():
        coords = torch.tensor([[0, 1, 1, 1], [0, 1, 2, 1], [1, 2, 2, 2]], dtype=torch.int32)
        x = spconv.SparseConvTensor(torch.randn(3, 2, requires_grad=True), coords, [4, 4, 4], 2)
        net = spconv.SparseSequential(
            spconv.SubMConv3d(2, 4, 3, bias=False, indice_key="s1"),
            spconv.SparseConv3d(4, 4, 3, stride=2, padding=1, bias=False),
        )
        net(x).features.sum().backward()

    try:
        run()
        print("UNPATCHED_OK")
    except RuntimeError:
        print("UNPATCHED_FAIL")
        print(traceback.format_exc())
    sc.ensure_cpu_backward()
    run()
    print("PATCHED_OK")
    """
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the bug only shows without CUDA")
def test_backward_fails_without_fix_and_works_with_it():
    """Fresh interpreter: plain spconv backward on CPU raises in ops.get_current_stream."""
    proc = subprocess.run(
        [sys.executable, "-c", UNPATCHED_SCRIPT],
        cwd=REPO,
        text=True,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "UNPATCHED_FAIL" in out, out
    assert "spconv/pytorch/ops.py" in out and "indice_conv_backward" in out, out
    assert "get_current_stream" in out and "torch.cuda.current_stream()" in out, out
    assert "PATCHED_OK" in out, out


def test_patch_is_narrow_and_idempotent():
    import spconv.pytorch.cppcore as cppcore
    import spconv.pytorch.ops as ops

    original = cppcore.get_current_stream  # spconv's own function is never replaced
    assert sc.ensure_cpu_backward() == sc.ensure_cpu_backward()
    first = ops.get_current_stream
    sc.ensure_cpu_backward()
    assert ops.get_current_stream is first  # idempotent: no wrapper around a wrapper
    assert cppcore.get_current_stream is original
    if torch.cuda.is_available():  # nothing to fix: left untouched
        assert not sc.cpu_backward_patch_active() and ops.get_current_stream is original
        return
    assert sc.cpu_backward_patch_active()
    assert ops.get_current_stream() == 0
    try:
        assert sc.remove_cpu_backward_patch()
        assert ops.get_current_stream is original
        assert not sc.remove_cpu_backward_patch()
    finally:
        assert sc.ensure_cpu_backward()
    assert sc.cpu_backward_patch_active()


def test_require_spconv_applies_both_fixes():
    from spconv.cppconstants import CPU_ONLY_BUILD

    sc.remove_cpu_backward_patch()
    sc.remove_cpu_scatter_add_patch()
    try:
        sc.require_spconv()
        assert sc.cpu_backward_patch_active() == (not torch.cuda.is_available())
        assert sc.cpu_scatter_add_patch_active() == CPU_ONLY_BUILD
    finally:
        sc.ensure_cpu_backward()
        sc.ensure_cpu_scatter_add()


def test_wrapper_delegates_when_cuda_is_available(monkeypatch):
    wrapped = sc._cpu_safe(lambda: 1234)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert wrapped() == 1234
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert wrapped() == 0


def test_import_is_lazy_and_missing_spconv_error_is_clear():
    script = textwrap.dedent(
        """
        import sys
        import maskfm.nn.sparse_compat as sc, maskfm.nn.sparse_backbone
        assert "spconv" not in sys.modules, "importing maskfm must not import spconv"
        sys.modules["spconv"] = None  # any `import spconv...` now raises ImportError
        sys.modules["spconv.pytorch"] = None
        assert not sc.spconv_available()
        try:
            maskfm.nn.sparse_backbone.VoxelBackBone8x(4, (41, 1600, 1408))
        except ImportError as e:
            print(e)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, text=True, capture_output=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'pip install "maskfm[lidar]"' in proc.stdout
    assert "spconv-cu" in proc.stdout


def _tv(t: torch.Tensor):
    from spconv.pytorch.cppcore import torch_tensor_to_tv

    return torch_tensor_to_tv(t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_race_free_scatter_add_matches_index_add(dtype):
    import spconv.pytorch.ops as ops

    assert sc.ensure_cpu_scatter_add()
    g = torch.Generator().manual_seed(13)
    out = torch.randn(300, 64, generator=g).to(dtype)
    src = torch.randn(260, 64, generator=g).to(dtype)  # buffer longer than the index list
    index = torch.randint(0, 300, (250,), generator=g, dtype=torch.int32)  # with repeats
    want = out.clone().index_add_(0, index.long(), src[:250])
    ops.SpconvOps.scatter_add_cpu(_tv(out), _tv(src), _tv(index))
    tol = 1e-2 if dtype == torch.float16 else 1e-6
    torch.testing.assert_close(out, want, atol=tol, rtol=tol)
    # strided view of a pair table row, as spconv passes it
    table = torch.full((2, 400), -1, dtype=torch.int32)
    table[1, :250] = index
    out2 = torch.zeros(300, 64, dtype=dtype)
    ops.SpconvOps.scatter_add_cpu(_tv(out2), _tv(src), _tv(table)[1].slice_first_axis(0, 250))
    torch.testing.assert_close(
        out2, torch.zeros_like(out2).index_add_(0, index.long(), src[:250]), atol=tol, rtol=tol
    )


def test_scatter_add_patch_is_narrow_and_idempotent():
    import spconv.pytorch.ops as ops
    from spconv.core_cc.csrc.sparse.all import SpconvOps
    from spconv.cppconstants import CPU_ONLY_BUILD

    if not CPU_ONLY_BUILD:
        assert not sc.ensure_cpu_scatter_add() and ops.SpconvOps is SpconvOps
        return
    assert sc.ensure_cpu_scatter_add() and sc.ensure_cpu_scatter_add()
    patched = ops.SpconvOps
    assert patched is not SpconvOps and issubclass(patched, SpconvOps)
    assert "scatter_add_cpu" in vars(patched)
    assert patched.gather_cpu is SpconvOps.gather_cpu  # everything else inherited unchanged
    assert patched.scatter_add_cpu is not SpconvOps.scatter_add_cpu
    try:
        assert sc.remove_cpu_scatter_add_patch() and ops.SpconvOps is SpconvOps
        assert not sc.remove_cpu_scatter_add_patch()
    finally:
        sc.ensure_cpu_scatter_add()
    assert sc.cpu_scatter_add_patch_active()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the OpenMP race needs >= 2 cores")
def test_patched_scatter_add_is_what_spconv_calls_and_is_exact_with_threads():
    """What the patch promises, checked deterministically: the class ``spconv.pytorch.ops``
    calls is the race-free one, and it adds every row to its own site (duplicate indices
    included) on every one of many calls with 2 OpenMP threads, bit for bit.

    spconv's own kernel races (~40 % of such calls were wrong on an idle 2-core machine), but
    whether two threads overlap depends on the load, so a test that expects the race would
    pass or skip whatever happens; ``python -m maskfm.bench +experiment=rmae`` is where
    spconv's kernel is measured.
    """
    from spconv.cppconstants import CPU_ONLY_BUILD
    from spconv.pytorch import ops

    if not CPU_ONLY_BUILD:
        pytest.skip("the CUDA build does not use the CPU scatter-add")
    sc.ensure_cpu_scatter_add()
    assert sc.cpu_scatter_add_patch_active() and ops.SpconvOps.__name__ == "SpconvOpsRaceFreeCPU"
    g = torch.Generator().manual_seed(14)
    base = torch.randn(2000, 64, generator=g)
    src = torch.randn(1500, 64, generator=g)
    index = torch.randint(0, 2000, (1500,), generator=g).int()  # repeats: rows add up
    assert len(index.unique()) < len(index)
    want = base.clone().index_add_(0, index.long(), src)
    for _ in range(50):
        out = base.clone()
        with num_threads(2):
            ops.SpconvOps.scatter_add_cpu(_tv(out), _tv(src), _tv(index))
        assert torch.equal(out, want)


# ----------------------------------------------------------------------- algo, bias, helpers


def test_default_algo_is_native_on_cpu():
    from spconv.core import ConvAlgo
    from spconv.cppconstants import CPU_ONLY_BUILD

    assert sc.default_algo("cpu") == ConvAlgo.Native
    if CPU_ONLY_BUILD or not torch.cuda.is_available():
        assert sc.default_algo() == ConvAlgo.Native
    for layer in (
        sc.subm_conv3d(2, 3),
        sc.sparse_conv3d(2, 3, 3, 2, 1, indice_key="k"),
        sc.sparse_inverse_conv3d(3, 2, 3, indice_key="k"),
    ):
        assert layer.bias is None
        assert layer.algo == ConvAlgo.Native


def test_eval_mode_needs_bias_free_layers():
    from spconv.cppconstants import CPU_ONLY_BUILD

    feats, coords = random_grid(seed=12)
    spconv = sc.require_spconv()
    x = sc.sparse_tensor(feats, coords, SHAPE, BATCH)
    with torch.no_grad():
        out = sc.subm_conv3d(C_IN, C_OUT).to(DTYPE).eval()(x)
    assert out.features.shape == (len(coords), C_OUT)
    biased = spconv.SubMConv3d(C_IN, C_OUT, 3, bias=True, algo=sc.default_algo())
    biased = biased.to(DTYPE).eval()
    if CPU_ONLY_BUILD:  # documents why every factory uses bias=False
        with torch.no_grad(), pytest.raises(AssertionError, match="cpu don't support act and"):
            biased(x)


def test_sparse_tensor_validates_inputs():
    feats, coords = random_grid()
    x = sc.sparse_tensor(feats, coords.long(), SHAPE, BATCH)
    assert x.indices.dtype == torch.int32 and list(x.spatial_shape) == list(SHAPE)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        sc.sparse_tensor(feats[:, 0], coords, SHAPE, BATCH)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        sc.sparse_tensor(feats, coords[:, 1:], SHAPE, BATCH)
    with pytest.raises(ValueError, match="feature rows"):
        sc.sparse_tensor(feats[:-1], coords, SHAPE, BATCH)
    with pytest.raises(TypeError, match="integer"):
        sc.sparse_tensor(feats, coords.float(), SHAPE, BATCH)
    with pytest.raises(ValueError, match="out of range"):
        sc.sparse_tensor(feats, coords, SHAPE, batch_size=1)
    with pytest.raises(ValueError, match="spatial_shape"):
        sc.sparse_tensor(feats, coords, (5, 6), BATCH)
    with pytest.raises(ValueError, match="features must be"):
        sc.replace_feature(x, feats[:-1])
    assert sc.replace_feature(x, feats * 2).features.shape == feats.shape


def test_weight_layout_is_krsc():
    conv = sc.sparse_conv3d(3, 5, (3, 1, 2), stride=1)
    assert tuple(conv.weight.shape) == (5, 3, 1, 2, 3)  # [out, kz, ky, kx, in]
    assert tuple(sc.weight_to_torch_layout(conv.weight).shape) == (5, 3, 3, 1, 2)
