"""How a parameter finds its devices: a mesh, an ordered rule table, and the specs it gives.

- `make_mesh(data=-1, fsdp=1, tensor=1)`: a mesh with axes ("data", "fsdp", "tensor"). Size-1
  axes cost nothing, so the same code runs on one CPU and on a pod.
- Rules: an ordered tuple of `(regex, PartitionSpec)`. The regex is searched in the parameter's
  path (e.g. `image.encoder.layers.attention.query.weight`); the first match wins. The spec
  names mesh axes for the parameter's TRAILING dimensions (a stacked encoder's leading `depth`
  axis stays unsharded). A dimension that does not divide by its mesh axes is replicated.
- Optimizer states mirror the parameter tree (`...mu.image.encoder...`), so the same rules
  shard them alongside the parameters.

We use Auto mesh axes (not JAX's Explicit default): contractions over a sharded dimension then
need no `out_sharding=` at every matmul, XLA's partitioner inserts the collectives, and one model
code path serves every rule preset. Batch constraints (`constrain_batch`) pin activations where
the layout matters.
"""

import math
import re
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

P = PartitionSpec
AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over every data-parallel device
Rules = tuple[tuple[str, PartitionSpec], ...]


def make_mesh(
    *, data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence | None = None
) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over `devices` (default: all); `-1` takes the rest."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    unknown = [name for name, size in sizes.items() if size == -1]
    known = math.prod(size for size in sizes.values() if size != -1)
    if len(unknown) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
        raise ValueError(f"mesh sizes must be positive with at most one -1, got {sizes}")
    if unknown:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not split into {sizes}")
        sizes[unknown[0]] = len(devices) // known
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(
            f"mesh {sizes} needs {math.prod(sizes.values())} devices but {len(devices)} are "
            "given: make data * fsdp * tensor equal the device count, or pass data=-1"
        )
    return jax.make_mesh(
        tuple(sizes[a] for a in AXES), AXES, axis_types=(AxisType.Auto,) * 3, devices=devices
    )


# LayerNorms, biases, scalars and other small vectors are replicated in every preset.
_SMALL = (r"norm\w*\.(weight|bias)$", P())
_RULES: dict[str, Rules] = {
    "dp": ((r".*", P()),),
    "fsdp": (
        _SMALL,
        (r"position_embedding\.weight$", P(None, "fsdp")),
        (r"(class_token|probe)$", P(None, "fsdp")),
        (r"patch_embedding\.projection\.weight$", P(None, "fsdp")),  # p*p*3 rows rarely divide
        (r"token_embedding$", P("fsdp", None)),
        (r"\.weight$", P("fsdp", None)),  # Linear (in, out): shard the input dimension
        (r".*", P()),
    ),
    "fsdp_tp": (
        _SMALL,
        (r"position_embedding\.weight$", P(None, ("fsdp", "tensor"))),
        (r"(class_token|probe)$", P(None, ("fsdp", "tensor"))),
        (r"patch_embedding\.projection\.weight$", P(None, ("fsdp", "tensor"))),
        (r"token_embedding$", P("fsdp", "tensor")),
        # Megatron layout: column-parallel in, row-parallel out, one all-reduce per block half.
        (r"attention\.(query|key|value)\.weight$", P("fsdp", "tensor")),
        (r"attention\.(query|key|value)\.bias$", P("tensor")),
        (r"attention\.output\.weight$", P("tensor", "fsdp")),
        (r"mlp\.fc1\.weight$", P("fsdp", "tensor")),
        (r"mlp\.fc1\.bias$", P("tensor")),
        (r"mlp\.fc2\.weight$", P("tensor", "fsdp")),
        (r"\.weight$", P("fsdp", "tensor")),
        (r".*", P()),
    ),
}


def rules(name: str) -> Rules:
    """A preset rule table: "dp" (replicate), "fsdp" (shard every large parameter over "fsdp"),
    "fsdp_tp" (Megatron tensor parallelism over "tensor" plus FSDP over "fsdp")."""
    try:
        return _RULES[name]
    except KeyError:
        raise ValueError(f"unknown sharding rules {name!r}: use one of {sorted(_RULES)}") from None


def path_name(path: tuple) -> str:
    """`image.encoder.layers.mlp.fc1.weight` for a pytree key path."""
    parts = []
    for key in path:
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts)


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    names = axes if isinstance(axes, tuple) else (axes,)
    return math.prod(mesh.shape[n] for n in names)


def spec_for(name: str, shape: tuple[int, ...], rule_table: Rules, mesh: Mesh) -> PartitionSpec:
    """The spec of one parameter: first matching rule, right-aligned, non-dividing dims replicated."""
    for pattern, spec in rule_table:
        if re.search(pattern, name):
            break
    else:
        raise ValueError(f"no sharding rule matches {name!r}: end the rules with ('.*', P())")
    # Right-align: a spec longer than the array keeps its last entries (a 1-D leaf matched by
    # a 2-D rule takes the rule's last dimension).
    trailing = tuple(spec)[-len(shape):] if shape else ()
    full = (None,) * (len(shape) - len(trailing)) + trailing
    full = tuple(
        axes if axes is not None and dim % _axis_size(mesh, axes) == 0 else None
        for dim, axes in zip(shape, full)
    )
    return P(*full)


def param_specs(tree: PyTree, rule_table: Rules, mesh: Mesh) -> PyTree:
    """A PartitionSpec for every array leaf (arrays or `jax.eval_shape` output)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: spec_for(path_name(path), tuple(leaf.shape), rule_table, mesh), tree
    )


def shardings(tree: PyTree, rule_table: Rules, mesh: Mesh) -> PyTree:
    """`NamedSharding`s for every array leaf of `tree`."""
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec), param_specs(tree, rule_table, mesh),
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def init_sharded(make: Callable[[], PyTree], rule_table: Rules, mesh: Mesh) -> PyTree:
    """Runs `make()` under `jit` with sharded outputs: each device only ever holds its shards."""
    abstract = jax.eval_shape(make)
    return jax.jit(make, out_shardings=shardings(abstract, rule_table, mesh))()


def shard(tree: PyTree, rule_table: Rules, mesh: Mesh) -> PyTree:
    """Places existing arrays (parameters, optimizer state) as the rules say."""
    return jax.device_put(tree, shardings(tree, rule_table, mesh))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) axis split over ("data", "fsdp"), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def constrain_batch(x: jax.Array) -> jax.Array:
    """Pins the leading axis of an activation to the data-parallel axes of the current mesh.

    A no-op when no mesh with those axes is set (`jax.set_mesh`), so models stay
    mesh-agnostic.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x
    if x.shape[0] % math.prod(mesh.shape[a] for a in BATCH_AXES):
        return x
    return jax.lax.with_sharding_constraint(x, P(BATCH_AXES, *([None] * (x.ndim - 1))))


def bytes_per_device(tree: PyTree, rule_table: Rules, mesh: Mesh) -> int:
    """Bytes one device holds for `tree` under the rules (the most loaded device)."""
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings(tree, rule_table, mesh))):
        total += math.prod(sharding.shard_shape(tuple(leaf.shape))) * np.dtype(leaf.dtype).itemsize
    return total


def replicated_above(
    tree: PyTree, rule_table: Rules, mesh: Mesh, *, min_bytes: int = 1 << 20
) -> list[str]:
    """Names of parameters of at least `min_bytes` that the rules leave fully replicated."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = []
    for path, leaf in flat:
        size = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
        spec = spec_for(path_name(path), tuple(leaf.shape), rule_table, mesh)
        if size >= min_bytes and all(a is None for a in spec):
            out.append(path_name(path))
    return out


def check_fsdp(tree: PyTree, rule_table: Rules, mesh: Mesh, *, min_bytes: int = 1 << 20) -> None:
    """Raises if a parameter of `min_bytes` or more is left replicated (a rule-table bug)."""
    missed = replicated_above(tree, rule_table, mesh, min_bytes=min_bytes)
    if missed:
        raise ValueError(
            f"{len(missed)} parameters >= {min_bytes} bytes are replicated under these rules: "
            f"{missed[:5]}: add a rule for them or make their dimensions divide the mesh"
        )


def report(tree: PyTree, rule_table: Rules, mesh: Mesh) -> str:
    """A table of every parameter, its shape, its spec and its bytes per device."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    rows = []
    for path, leaf in flat:
        shape = tuple(leaf.shape)
        spec = spec_for(path_name(path), shape, rule_table, mesh)
        shard_shape = NamedSharding(mesh, spec).shard_shape(shape)
        per_device = math.prod(shard_shape) * np.dtype(leaf.dtype).itemsize
        rows.append((path_name(path), str(shape), str(tuple(spec)), per_device))
    width = max(len(r[0]) for r in rows)
    lines = [f"mesh {dict(mesh.shape)}", f"{'parameter':<{width}}  {'shape':<18} {'spec':<28} bytes/device"]
    lines += [f"{n:<{width}}  {s:<18} {p:<28} {b:>12,}" for n, s, p, b in rows]
    total = sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for _, leaf in flat)
    per_device = sum(r[3] for r in rows)
    lines.append(f"total {total:,} bytes; {per_device:,} per device ({per_device / total:.3f} of all)")
    return "\n".join(lines)
