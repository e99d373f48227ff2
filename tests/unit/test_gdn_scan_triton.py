"""The GDN chunk-state scan as one Triton launch (`gdn._scan_triton`) against the Python `baddbmm` loops it replaces.

Production runs it on CUDA only; here it runs under Triton's CPU interpreter on CPU tensors, so these tests need
triton importable and TRITON_INTERPRET=1 (set before the run, it is read when the kernel is built), e.g.
`TRITON_INTERPRET=1 PYTHONPATH=/tmp/tritonpkg .venv/bin/python -m pytest tests/unit/test_gdn_scan_triton.py`.
Otherwise (CI: no triton) they skip. The GPU check and timing is tests/gpu/test_fast_gpu.py.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from cardforge.train.fast import gdn

needs_interpreter = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") != "1",
    reason="the Triton scan runs on CPU only under Triton's interpreter: "
           "needs triton importable and TRITON_INTERPRET=1")


@pytest.fixture(autouse=True)
def _interpreter_numpy_index(monkeypatch):
    """Triton 3.6's interpreter turns a scalar (a 1-element numpy array) into a Python int for `range(n_steps - 1)`
    with int(array), which NumPy >= 2.4 refuses for 1-d arrays; convert through the element instead. Only the
    interpreter is touched (the compiled GPU kernel has no numpy), and only where NumPy refuses."""
    try:
        int(np.array([1]))
        return
    except TypeError:
        pass
    if importlib.util.find_spec("triton") is None:
        return
    import triton.runtime.interpreter as interp
    original = interp._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    monkeypatch.setattr(interp, "_patch_lang_tensor", patched)


def _inputs(bh, n, dk, dv, seed=0):
    """M like the model's (decay on the diagonal minus a small low-rank-ish part: contractive), C random."""
    g = torch.Generator().manual_seed(seed)
    m = 0.9 * torch.eye(dk) + 0.05 * dk ** -0.5 * torch.randn(bh, n, dk, dk, generator=g)
    c = torch.randn(bh, n, dk, dv, generator=g)
    return m, c


@needs_interpreter
@pytest.mark.parametrize("bh,dk,dv", [(3, 128, 128), (2, 64, 128)])
@pytest.mark.parametrize("n", [1, 2, 5, 64])
def test_triton_scan_equals_the_loops(bh, dk, dv, n):
    m, c = _inputs(bh, n, dk, dv, seed=n)
    fwd = gdn._scan_triton(m, c, reverse=False, precision="ieee")
    want = gdn._scan_loop(m, c)
    torch.testing.assert_close(fwd, want, rtol=1e-5, atol=1e-5)
    assert fwd[:, 0].abs().max() == 0  # the kernel writes the zero initial state itself (empty_like output)
    rev = gdn._scan_triton(m, c, reverse=True, precision="ieee")
    torch.testing.assert_close(rev, gdn._scan_backward_loop(m, c), rtol=1e-5, atol=1e-5)
    assert rev[:, n - 1].abs().max() == 0
    if n > 2:  # forward and reverse really differ (M^T, order): the test would catch a swapped direction
        assert not torch.allclose(fwd, rev)


@needs_interpreter
@pytest.mark.parametrize("config", [(32, 4, 1), (16, 8, 2)])
def test_triton_scan_other_block_widths(config):
    """The fallback configs (narrower v-blocks: more programs, each its own columns of the state) agree too."""
    m, c = _inputs(2, 5, 64, 64, seed=1)
    for reverse, loop in ((False, gdn._scan_loop), (True, gdn._scan_backward_loop)):
        out = gdn._scan_triton(m, c, reverse=reverse, precision="tf32", config=config)
        torch.testing.assert_close(out, loop(m, c), rtol=1e-5, atol=1e-5)


@needs_interpreter
@pytest.mark.parametrize("n", [1, 2, 6])
def test_ops_take_the_triton_path_and_match(monkeypatch, n):
    """`state_scan` and its backward op through the Triton path (dispatch forced on for CPU tensors here; in
    production it is CUDA only) equal the loops: the forward states, and dM, dC through autograd."""
    m, c = _inputs(2, n, 32, 64, seed=n)
    w = torch.randn(c.shape, generator=torch.Generator().manual_seed(7))
    results = []
    calls = []
    real = gdn._scan_triton

    def spy(*args, **kwargs):
        calls.append(kwargs.get("reverse", args[2] if len(args) > 2 else None))
        return real(*args, **kwargs)

    for forced in (False, True):
        monkeypatch.setattr(gdn, "_use_triton", lambda *_: forced)
        monkeypatch.setattr(gdn, "_scan_triton", spy)
        mm, cc = m.clone().requires_grad_(), c.clone().requires_grad_()
        s = gdn.state_scan(mm, cc)
        (s * w).sum().backward()
        results.append((s.detach(), mm.grad, cc.grad))
        assert calls == ([False, True] if forced else [])
    for name, a, b in zip(("states", "dM", "dC"), *results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


@needs_interpreter
def test_triton_scan_refuses_what_it_does_not_support():
    m, c = _inputs(1, 3, 48, 64)
    with pytest.raises(ValueError, match="unsupported shapes"):
        gdn._scan_triton(m, c, reverse=False)
    m, c = _inputs(1, 3, 32, 64)
    with pytest.raises(ValueError, match="float32"):
        gdn._scan_triton(m.double(), c.double(), reverse=False)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton importable")
def test_out_of_resources_falls_back_to_the_loop(monkeypatch):
    """A GPU where no config fits (shared memory: Dk = 256) raises OutOfResources at launch: every config is tried,
    then the ops run the loop, and later calls go straight to it (remembered per shape)."""
    from triton.runtime.errors import OutOfResources

    tried = []

    class Refusing:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                tried.append((kwargs["BV"], kwargs["num_warps"], kwargs["num_stages"]))
                raise OutOfResources(262144, 232448, "shared memory")
            return launch

    monkeypatch.setattr(gdn, "_triton_kernel", lambda: Refusing())
    monkeypatch.setattr(gdn, "_triton_config_cache", {})
    monkeypatch.setattr(gdn, "_use_triton", lambda *_: True)
    m, c = _inputs(2, 4, 32, 32)
    assert gdn._scan_triton(m, c, reverse=False) is None
    assert tried == gdn._triton_configs(32, 32)
    torch.testing.assert_close(gdn.state_scan(m, c), gdn._scan_loop(m, c))
    assert len(tried) == len(gdn._triton_configs(32, 32))  # not tried again


@pytest.mark.skipif(importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="compiles the real kernel: needs triton importable and TRITON_INTERPRET unset")
@pytest.mark.parametrize("precision", ["tf32", "ieee"])
@pytest.mark.parametrize("reverse", [False, True])
def test_kernel_compiles_for_h100_within_its_resources(reverse, precision):
    """No GPU needed: Triton compiles the kernel for sm_90a (ptxas ships in the wheel) in the 27B's default config;
    it fits an H100's 227 KiB of shared memory per block and its registers, TF32 without spilling, full fp32 (the
    FMA dot with K split in four) with under 1 KB of spills per thread (~13 KB unsplit)."""
    import subprocess

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = gdn._triton_kernel()
    bv, warps, stages = gdn._triton_configs(128, 128)[0]
    consts = dict(DK=128, DV=128, BV=bv, REVERSE=reverse, PRECISION=precision, KSPLIT=precision == "ieee")
    signature = dict(a_ptr="*fp32", x_ptr="*fp32", y_ptr="*fp32", n_steps="i32", **{k: "constexpr" for k in consts})
    src = ASTSource(fn=kernel, signature=signature,
                    constexprs={(kernel.arg_names.index(k),): v for k, v in consts.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=warps, num_stages=stages))
    assert compiled.metadata.shared <= 227 * 1024
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"gdn_scan_{os.getpid()}.cubin"), "wb") as f:
        f.write(compiled.asm["cubin"])
    try:
        usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    stack = int(usage.split("STACK:")[1].split()[0])  # bytes per thread: spills
    assert stack <= (0 if precision == "tf32" else 1024), usage
    regs = int(usage.split("REG:")[1].split()[0])
    assert regs * warps * 32 <= 65536, usage


def test_production_dispatch_uses_the_loop_on_cpu():
    """Without CUDA tensors the ops never take the Triton path (CPU runs, CI, float64 gradchecks)."""
    m, c = _inputs(1, 3, 32, 32)
    assert not gdn._use_triton(m, c)
    assert not gdn._use_triton(m.double(), c.double())


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton importable")
def test_the_scan_stays_full_fp32_when_tf32_is_allowed(monkeypatch):
    """The train stage's `trainer.tf32` turns on allow_tf32, but the Triton scan keeps full fp32: its TF32 mode
    (operands truncated) measured 4e-3 from a float64 scan on an H100 against the cuBLAS TF32 loop's 5e-4."""
    launched = []

    class Recording:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append(kwargs["PRECISION"])

    monkeypatch.setattr(gdn, "_triton_kernel", lambda: Recording())
    monkeypatch.setattr(gdn, "_triton_config_cache", {})
    m, c = _inputs(1, 3, 32, 32)
    before = torch.backends.cuda.matmul.allow_tf32  # a property of torch's cuBLAS module (no monkeypatch)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        for reverse in (False, True):
            assert gdn._scan_triton(m, c, reverse=reverse) is not None
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert launched == ["ieee", "ieee"]
    assert gdn._scan_triton(m, c, reverse=False, precision="tf32") is not None and launched[-1] == "tf32"
