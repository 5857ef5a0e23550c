"""How eqvlp's Pallas kernels lower on each platform, and what their tiles ask of a GPU.

- CPU: the Pallas interpreter (`interpret=True`), as the tests run every kernel.
- CUDA and ROCm: Triton, chosen explicitly with `jax.experimental.pallas.triton.CompilerParams`
  (`num_warps` from the tile sizes, `num_stages=2`). Without compiler parameters JAX 0.10 sends a
  `pallas_call` on GPU to Mosaic GPU, which cannot lower these block-level kernels.
- Any other platform (TPU): Pallas' own default, never checked.

`interpret=None` makes the choice with `jax.lax.platform_dependent`, when the program is
lowered rather than when it is traced, so a CPU machine lowers the GPU program as a GPU would.
`lower_for_gpu` does that, on abstract H100s; it is how the kernels are checked for a GPU
without one (tests/test_kernels_gpu_lowering.py).

Lowering checks what Pallas and Triton's front end accept (powers of two, dot shapes), not what
the Triton compiler later fits on the chip, so each kernel estimates its shared memory, picks
default blocks within an H100's budget and warns about explicit ones beyond it (docs/kernels.md
has the arithmetic).
"""

import warnings
from collections.abc import Callable

import jax
from jax.experimental import pallas as pl

#: Shared memory one thread block may use on an H100 or H200 (sm_90: 227 KiB, opt-in maximum).
SHARED_MEMORY_BYTES = 232_448
#: Software-pipelining depth of the loops that stream tiles (double buffering).
NUM_STAGES = 2
#: Smallest tile side: Triton's `tl.dot` needs M, N and K of at least 16.
MIN_BLOCK = 16


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=4)


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check_block(owner: str, name: str, value: int) -> None:
    """Blocks must be powers of two of at least 16 (Triton tensors and `tl.dot` shapes)."""
    if not isinstance(value, int) or not is_power_of_two(value) or value < MIN_BLOCK:
        raise ValueError(
            f"{owner}.{name} must be a power of two >= {MIN_BLOCK} (Triton tiles), got {value!r}: "
            f"use e.g. {MIN_BLOCK}, 32, 64 or 128"
        )


def padded_dim(dim: int) -> int:
    """The feature width a kernel tile uses: the next power of two, at least 16 (zero padding)."""
    return max(MIN_BLOCK, pl.next_power_of_2(dim))


def num_warps(largest_tile: int) -> int:
    """4 warps while a program's largest float32 tile is at most 64 values a thread, else 8."""
    return 4 if largest_tile <= 4 * 32 * 64 else 8


def shrink_to_fit(
    estimate: Callable[[int, int], int], block_a: int, block_b: int
) -> tuple[int, int]:
    """Halves the larger block (the second on a tie) until `estimate` fits the H100 budget.

    Stops at 16 x 16; the caller warns if that still does not fit (`warn_if_over_budget`).
    """
    while estimate(block_a, block_b) > SHARED_MEMORY_BYTES and max(block_a, block_b) > MIN_BLOCK:
        if block_a > block_b:
            block_a //= 2
        else:
            block_b //= 2
    return block_a, block_b


def warn_if_over_budget(kernel: str, needed: int, interpret: bool | None, fix: str) -> None:
    """Warns once when tiles bound for a GPU exceed the H100 estimate.

    A warning, not an error: the estimate is conservative, and the Triton compiler has the last
    word when it compiles. Bound for a GPU: `interpret=False`, or `None` on a GPU machine.
    """
    for_gpu = interpret is False or (interpret is None and jax.default_backend() == "gpu")
    if for_gpu and needed > SHARED_MEMORY_BYTES:
        _warn_once(f"{kernel} needs about {needed} bytes of GPU shared memory per program by "
                   f"eqvlp's estimate, more than an H100 has ({SHARED_MEMORY_BYTES}), so Triton "
                   f"may refuse to compile it: {fix}")


def triton_compiler_params(warps: int, stages: int = NUM_STAGES):
    """`jax.experimental.pallas.triton.CompilerParams`; a clear error if this JAX has none."""
    try:
        from jax.experimental.pallas import triton as pallas_triton
    except ImportError as e:
        raise ImportError(
            f"this JAX ({jax.__version__}) has no Pallas Triton backend "
            "(jax.experimental.pallas.triton), which eqvlp's GPU kernels lower through: install "
            "a JAX that ships it (0.10-0.11 do), or use attention impl='xla'/'cudnn' and the "
            "jnp sigmoid loss"
        ) from e
    return pallas_triton.CompilerParams(num_warps=warps, num_stages=stages)


def _gpu_params_or_none(warps: int, stages: int):
    try:
        return triton_compiler_params(warps, stages)
    except ImportError as e:
        _warn_once(f"{e}. On GPU the kernels fall back to Pallas' default backend, which eqvlp "
                   "has not checked.")
        return None


def pallas_call(
    kernel: Callable, *, interpret: bool | None, warps: int, stages: int = NUM_STAGES, **kwargs
) -> Callable:
    """`pl.pallas_call` with the platform's lowering made explicit.

    **Arguments:**

    - `kernel`, `kwargs`: as for `pl.pallas_call` (`out_shape`, `grid`, specs, `name`).
    - `interpret`: `True` the interpreter; `False` Triton (GPU only); `None` per platform, chosen
      at lowering: the interpreter on CPU, Triton on CUDA/ROCm, Pallas' default elsewhere.
    - `warps`, `stages`: Triton's `num_warps` and `num_stages`.
    """
    if interpret:
        return pl.pallas_call(kernel, interpret=True, **kwargs)
    if interpret is not None:
        return pl.pallas_call(kernel, compiler_params=triton_compiler_params(warps, stages),
                              **kwargs)
    gpu = pl.pallas_call(kernel, compiler_params=_gpu_params_or_none(warps, stages), **kwargs)
    cpu = pl.pallas_call(kernel, interpret=True, **kwargs)
    other = pl.pallas_call(kernel, **kwargs)

    def per_platform(*args):
        return jax.lax.platform_dependent(*args, cpu=cpu, cuda=gpu, rocm=gpu, default=other)

    return per_platform


#: The GPU the lowering checks target: JAX 0.11's Triton lowering asks the mesh for its device.
H100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=132, platform="gpu")


def gpu_abstract_mesh(mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None):
    """`mesh`'s axes (one device when `None`) on abstract H100s."""
    if mesh is None:
        return jax.sharding.AbstractMesh((1,), ("gpu",), abstract_device=H100)
    mesh = getattr(mesh, "abstract_mesh", mesh)
    return jax.sharding.AbstractMesh(mesh.axis_sizes, mesh.axis_names, mesh.axis_types,
                                     abstract_device=H100)


def lower_for_gpu(fn: Callable, *args, mesh=None) -> "jax.stages.Lowered":
    """`fn(*args)` traced and lowered for CUDA on this machine, whether it has a GPU or not.

    Runs all of JAX's and Pallas' GPU lowering (not the Triton or XLA compilers). `fn` is a
    plain or jitted function; `args` arrays or `jax.ShapeDtypeStruct`s. Pass the `mesh` that
    `fn`'s shardings or `shard_map` use; a `shard_map` inside must be built on
    `gpu_abstract_mesh(mesh)` itself.
    """
    if mesh is None:  # a device assignment: JAX 0.11 lowers cuDNN attention only with one
        mesh = jax.sharding.Mesh(jax.devices()[:1], ("gpu",))
        if not hasattr(fn, "trace"):
            replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            fn = jax.jit(fn, out_shardings=replicated)
    jitted = fn if hasattr(fn, "trace") else jax.jit(fn)
    with jax.sharding.use_abstract_mesh(gpu_abstract_mesh(mesh)):
        return jitted.trace(*args).lower(lowering_platforms=("cuda",))
