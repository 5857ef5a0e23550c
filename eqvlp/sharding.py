"""How a parameter finds its devices: a mesh, an ordered rule table, and the specs it gives.

- `make_mesh(data=-1, fsdp=1, tensor=1)`: a mesh with axes ("data", "fsdp", "tensor"). Size-1
  axes cost nothing, so the same code runs on one CPU and on a pod.
- Rules: an ordered tuple of `(matcher, spec)`; the first match wins. A matcher is a `Role`
  (what a parameter *is*: the `eqvlp.nn` block that owns it and its place there, e.g.
  `Role("attention_out")` for the output projection of any `MultiheadAttention`) or a regex
  string searched in the parameter's path (e.g. `image.encoder.layers.attention.query.weight`),
  for overrides. The preset tables match roles only, so a model built from `eqvlp.nn` blocks
  shards like a preset whatever its field names. The spec names mesh axes for the parameter's
  TRAILING dimensions (a stacked encoder's leading `depth` axis stays unsharded). A dimension
  that does not divide by its mesh axes is replicated. A rule may give several specs; the one
  that leaves the smallest shard wins (the first on a tie).
- Optimizer states mirror the parameter tree (`...mu.image.encoder...`), so the same rules
  shard them alongside the parameters. Leaves that are not arrays are left alone (spec `None`).

We use Auto mesh axes (not JAX's Explicit default): contractions over a sharded dimension then
need no `out_sharding=` at every matmul, XLA's partitioner inserts the collectives, and one model
code path serves every rule preset. Batch constraints (`constrain_batch`) pin activations where
the layout matters.
"""

import dataclasses
import math
import re
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

P = PartitionSpec
AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over every data-parallel device

#: What a parameter can be, by the `eqvlp.nn` block that owns it (see `role_of`).
ROLES = {
    "linear": "any other Linear weight (in, out)",
    "attention_in": "the query, key or value weight (in, out) of a MultiheadAttention",
    "attention_in_bias": "the query, key or value bias of a MultiheadAttention",
    "attention_out": "the output weight (in, out) of a MultiheadAttention",
    "mlp_in": "the first weight (dim, hidden) of an MLP",
    "mlp_in_bias": "the first bias of an MLP",
    "mlp_out": "the second weight (hidden, dim) of an MLP",
    "bias": "any other Linear bias",
    "norm": "a LayerNorm scale or bias",
    "patch": "the projection (p * p * channels, dim) of a PatchEmbedding or ConvStem",
    "conv": "a ConvStem kernel (3, 3, in, out)",
    "position": "a LearnedPositionEmbedding table (tokens, dim)",
    "table": "any other 2-D array a module holds: token tables, CLS/register tokens, MAP probes",
    "vector": "any other 1-D array",
    "scalar": "any 0-D array (logit scale, logit bias)",
    "array": "any other array of 3 or more dimensions",
}


@dataclasses.dataclass(frozen=True)
class Role:
    """Matches every parameter whose `role_of` is `name` (one of `ROLES`)."""

    name: str

    def __post_init__(self):
        if self.name not in ROLES:
            raise ValueError(f"unknown parameter role {self.name!r}: use one of {sorted(ROLES)}")

    def __repr__(self) -> str:
        return f"Role({self.name!r})"


Matcher = str | Role
Rules = tuple[tuple[Matcher, PartitionSpec | tuple[PartitionSpec, ...]], ...]
# What the public functions accept: `Rules` or a preset name. Deliberately loose for the runtime
# type checker: `as_rules` checks it and says what is wrong (a dict, a bad rule) and the fix.
RuleTable = Any


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


# Shard whichever of (rows, dim) gives the smaller shard: a vocabulary table its rows, a single
# CLS token or MAP probe its width.
_FSDP_TABLE = (P("fsdp", None), P(None, "fsdp"))
_TP_TABLE = (P("fsdp", "tensor"), P(None, ("fsdp", "tensor")))
_REPLICATED = tuple((Role(name), P()) for name in ("norm", "bias", "vector", "scalar", "conv"))
_RULES: dict[str, Rules] = {
    "dp": ((r".*", P()),),
    "fsdp": (
        *_REPLICATED,
        (Role("attention_in_bias"), P()),
        (Role("mlp_in_bias"), P()),
        (Role("position"), P(None, "fsdp")),
        (Role("patch"), P(None, "fsdp")),  # p*p*3 rows rarely divide
        (Role("table"), _FSDP_TABLE),
        *((Role(name), P("fsdp", None)) for name in
          ("linear", "attention_in", "attention_out", "mlp_in", "mlp_out")),  # shard `in`
        (r".*", P()),
    ),
    "fsdp_tp": (
        *_REPLICATED,
        (Role("position"), P(None, ("fsdp", "tensor"))),
        (Role("patch"), P(None, ("fsdp", "tensor"))),
        (Role("table"), _TP_TABLE),
        # Megatron layout: column-parallel in, row-parallel out, one all-reduce per block half.
        (Role("attention_in"), P("fsdp", "tensor")),
        (Role("attention_in_bias"), P("tensor")),
        (Role("attention_out"), P("tensor", "fsdp")),
        (Role("mlp_in"), P("fsdp", "tensor")),
        (Role("mlp_in_bias"), P("tensor")),
        (Role("mlp_out"), P("tensor", "fsdp")),
        (Role("linear"), P("fsdp", "tensor")),
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


def as_rules(rule_table: RuleTable) -> Rules:
    """A checked rule table: a preset name or an ordered tuple of `(matcher, spec)` pairs."""
    if isinstance(rule_table, str):
        return rules(rule_table)
    if isinstance(rule_table, dict):
        raise TypeError(
            "the sharding rule table is a dict, but rules are ordered (the first match wins): "
            "pass a tuple of (pattern, spec) pairs, e.g. tuple(table.items()), ending with "
            "('.*', P())"
        )
    try:
        entries = tuple(rule_table)
    except TypeError:
        raise TypeError(f"a sharding rule table is a tuple of (pattern, spec) pairs, got "
                        f"{type(rule_table).__name__}") from None
    for entry in entries:
        ok = isinstance(entry, tuple | list) and len(entry) == 2
        matcher, spec = entry if ok else (None, None)
        specs = spec if isinstance(spec, tuple) and not isinstance(spec, P) else (spec,)
        if not ok or not isinstance(matcher, str | Role) or not specs or not all(
                isinstance(s, P) for s in specs):
            raise TypeError(
                f"bad sharding rule {entry!r}: each rule is (regex string or sharding.Role, "
                "PartitionSpec or a tuple of PartitionSpecs), e.g. (r'\\.weight$', P('fsdp', None))"
            )
    return entries


def describe(rule_table: RuleTable) -> str:
    """A rule table as a Markdown table: matcher, spec, what it matches (docs/sharding.md)."""

    def spec_text(spec) -> str:
        if isinstance(spec, tuple) and not isinstance(spec, P):
            return " or ".join(spec_text(s) for s in spec) + " (the smaller shard)"
        return "`P(" + ", ".join(repr(a) for a in spec) + ")`"

    lines = ["| matcher | spec | matches |", "| --- | --- | --- |"]
    for matcher, spec in as_rules(rule_table):
        if isinstance(matcher, Role):
            lines.append(f"| `Role({matcher.name!r})` | {spec_text(spec)} | {ROLES[matcher.name]} |")
        else:
            lines.append(f"| `{matcher!r}` | {spec_text(spec)} | parameters whose path it matches |")
    return "\n".join(lines)


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


def _is_array(leaf) -> bool:
    """Arrays and `jax.eval_shape` output: anything with a shape and a dtype."""
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")


def path_child(node, key):
    """The child of `node` that one `jax.tree_util` path entry names (attribute, index or dict
    key); `LookupError` for any other kind of entry."""
    if isinstance(key, jax.tree_util.GetAttrKey):
        return getattr(node, key.name)
    if isinstance(key, jax.tree_util.SequenceKey):
        return node[key.idx]
    if isinstance(key, jax.tree_util.DictKey):
        return node[key.key]
    raise LookupError(key)


def _role_from_owners(owners: list[tuple[object, object]], ndim: int) -> str:
    from eqvlp import nn  # nn imports sharding's users; resolve at call time

    (owner, field), (parent, parent_field) = owners[-1], owners[-2] if len(owners) > 1 else (None, "")
    if isinstance(owner, list | tuple) and isinstance(parent, nn.ConvStem):
        return "conv"
    if isinstance(owner, nn.LayerNorm):
        return "norm"
    if isinstance(owner, nn.LearnedPositionEmbedding):
        return "position"
    if isinstance(owner, nn.Linear):
        if isinstance(parent, nn.MultiheadAttention):
            if parent_field in ("query", "key", "value"):
                return "attention_in" if field == "weight" else "attention_in_bias"
            return "attention_out" if field == "weight" else "bias"
        if isinstance(parent, nn.MLP):
            if parent_field == "fc1":
                return "mlp_in" if field == "weight" else "mlp_in_bias"
            return "mlp_out" if field == "weight" else "bias"
        if isinstance(parent, nn.PatchEmbedding | nn.ConvStem):
            return "patch" if field == "weight" else "bias"
        return "linear" if field == "weight" else "bias"
    return _role_from_shape(ndim)


def _role_from_shape(ndim: int) -> str:
    return {0: "scalar", 1: "vector", 2: "table"}.get(ndim, "array")


def role_of(tree: PyTree) -> PyTree:
    """The role (a key of `ROLES`) of every array leaf of `tree`, `None` for other leaves.

    A leaf's role comes from the `eqvlp.nn` block that holds it and its field there; an array
    held directly by any other module is a scalar, vector or table by its number of dimensions
    (a stacked encoder's leading `depth` axis not counted). Works on models, on optimizer
    states that mirror them, and on `jax.eval_shape` output.
    """
    treedef = jax.tree.structure(tree)
    return jax.tree_util.tree_unflatten(treedef, _leaf_roles(tree))


def _leaf_roles(tree: PyTree) -> list[str | None]:
    """`role_of` as a list in `jax.tree.leaves(tree)` order."""
    roles = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not _is_array(leaf):
            roles.append(None)
            continue
        owners, node = [], tree
        try:
            for key in path:
                owners.append((node, getattr(key, "name", getattr(key, "idx", getattr(key, "key", "")))))
                node = path_child(node, key)
        except (LookupError, AttributeError, TypeError, IndexError):
            roles.append(_role_from_shape(len(leaf.shape)))
            continue
        roles.append(_role_from_owners(owners, _stripped_ndim(owners, len(leaf.shape))))
    return roles


def _stripped_ndim(owners, ndim: int) -> int:
    """The number of dimensions without the leading `depth` axis of a stacked `Encoder`."""
    from eqvlp import nn

    stacked = sum(isinstance(node, nn.Encoder) for node, _ in owners)
    return ndim - stacked


def _matches(matcher: Matcher, name: str, role: str | None) -> bool:
    if isinstance(matcher, Role):
        return matcher.name == role
    return re.search(matcher, name) is not None


def _axis_size(mesh: Mesh, axes, rule) -> int:
    if axes is None:
        return 1
    names = axes if isinstance(axes, tuple) else (axes,)
    for n in names:
        if n not in mesh.shape:
            raise ValueError(
                f"sharding rule {rule!r} names mesh axis {n!r}, which the mesh does not have "
                f"(axes: {', '.join(mesh.axis_names)}): use one of them, e.g. make_mesh's "
                f"{AXES}"
            )
    return math.prod(mesh.shape[n] for n in names)


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh, rule) -> PartitionSpec:
    """`spec` right-aligned to `shape`, every non-dividing dimension replicated."""
    # Right-align: a spec longer than the array keeps its last entries (a 1-D leaf matched by
    # a 2-D rule takes the rule's last dimension).
    trailing = tuple(spec)[-len(shape):] if shape else ()
    full = (None,) * (len(shape) - len(trailing)) + trailing
    return P(*(
        axes if axes is not None and dim % _axis_size(mesh, axes, rule) == 0 else None
        for dim, axes in zip(shape, full)
    ))


def _shard_elements(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> int:
    return math.prod(NamedSharding(mesh, spec).shard_shape(shape)) if shape else 1


def spec_for(
    name: str, shape: tuple[int, ...], rule_table: Rules, mesh: Mesh, *, role: str | None = None
) -> PartitionSpec:
    """The spec of one parameter: first matching rule, right-aligned, non-dividing dims replicated.

    `role` (from `role_of`) is what `Role` matchers compare; regexes search `name`.
    """
    for rule in rule_table:
        if _matches(rule[0], name, role):
            break
    else:
        raise ValueError(f"no sharding rule matches {name!r}: end the rules with ('.*', P())")
    specs = rule[1] if isinstance(rule[1], tuple) and not isinstance(rule[1], P) else (rule[1],)
    fitted = [_fit(s, shape, mesh, rule) for s in specs]
    return min(fitted, key=lambda s: _shard_elements(s, shape, mesh))  # first on a tie


def _leaf_specs(tree: PyTree, rule_table: RuleTable, mesh: Mesh) -> list[PartitionSpec | None]:
    """`param_specs` as a list in `jax.tree.leaves(tree)` order."""
    rule_table = as_rules(rule_table)
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
        spec_for(path_name(path), tuple(leaf.shape), rule_table, mesh, role=role)
        if _is_array(leaf) else None
        for (path, leaf), role in zip(flat, _leaf_roles(tree), strict=True)
    ]


def param_specs(tree: PyTree, rule_table: RuleTable, mesh: Mesh) -> PyTree:
    """A PartitionSpec for every array leaf (arrays or `jax.eval_shape` output); other leaves
    (functions, strings) get `None` and are left alone."""
    return jax.tree_util.tree_unflatten(jax.tree.structure(tree),
                                        _leaf_specs(tree, rule_table, mesh))


def shardings(tree: PyTree, rule_table: RuleTable, mesh: Mesh) -> PyTree:
    """`NamedSharding`s for every array leaf of `tree` (`None` for other leaves)."""
    specs = _leaf_specs(tree, rule_table, mesh)
    return jax.tree_util.tree_unflatten(
        jax.tree.structure(tree), [None if s is None else NamedSharding(mesh, s) for s in specs])


# Arrays that `shard`, `init_sharded` or a train step created: the only ones a step may donate.
_OWNED: "weakref.WeakValueDictionary[int, jax.Array]" = weakref.WeakValueDictionary()


def mark_owned(tree: PyTree) -> None:
    """Records the arrays of `tree` as created by eqvlp (safe to donate to a train step)."""
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array):
            _OWNED[id(leaf)] = leaf


def is_owned(array: jax.Array) -> bool:
    """Whether `array` was created by `shard`, `init_sharded` or a train step (`mark_owned`)."""
    return _OWNED.get(id(array)) is array


def init_sharded(make: Callable[[], PyTree], rule_table: RuleTable, mesh: Mesh) -> PyTree:
    """Runs `make()` under `jit` with sharded outputs: each device only ever holds its shards."""
    abstract = jax.eval_shape(make)
    out = jax.jit(make, out_shardings=shardings(abstract, rule_table, mesh))()
    mark_owned(out)
    return out


def _shares_buffer(source: jax.Array, placed: jax.Array) -> bool:
    """Whether `placed` holds any device buffer of `source` (True when it cannot tell)."""
    try:
        held = {shard.data.unsafe_buffer_pointer() for shard in source.addressable_shards}
        return any(shard.data.unsafe_buffer_pointer() in held
                   for shard in placed.addressable_shards)
    except Exception:  # a backend without buffer pointers: assume the worst
        return True


def place_copies(arrays: list, targets: list) -> list:
    """`arrays` placed on the `targets` shardings, sharing no buffer with the inputs.

    `jax.device_put(..., may_alias=False)` is not enough: replicating an array of one device
    over a mesh reuses its buffer as the first shard. Only the leaves that would share a buffer
    are copied, so a real resharding costs no second copy.
    """
    placed = jax.device_put(arrays, targets)
    out = []
    for source, result, target in zip(arrays, placed, targets, strict=True):
        if isinstance(source, jax.Array) and _shares_buffer(source, result):
            result = jax.device_put(jnp.array(source, copy=True), target)
        out.append(result)
    return out


def shard(tree: PyTree, rule_table: RuleTable, mesh: Mesh, *, copy: bool = True) -> PyTree:
    """Places the array leaves of `tree` (parameters, optimizer state) on the devices as the
    rules say; other leaves are left alone.

    With `copy=True` the result shares no device buffer with `tree`, so a train step may donate
    it without deleting the arrays you passed in. `copy=False` lets JAX reuse their buffers
    where the placement allows (no transient second copy of a large model), and a train step
    may then donate them: only for arrays you will not use again.
    """
    leaves, treedef = jax.tree.flatten(tree)
    target_leaves = [None if s is None else NamedSharding(mesh, s)
                     for s in _leaf_specs(tree, rule_table, mesh)]
    at = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]
    arrays, targets = [leaves[i] for i in at], [target_leaves[i] for i in at]
    placed = place_copies(arrays, targets) if copy else jax.device_put(arrays, targets)
    for i, array in zip(at, placed):
        leaves[i] = array
    out = jax.tree.unflatten(treedef, leaves)
    mark_owned(out)
    return out


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) axis split over ("data", "fsdp"), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split: the product of the mesh's data-parallel axes."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)


def check_batch(x, mesh: Mesh, what: str = "batch") -> None:
    """Raises a clear error unless `x`'s leading (batch) axis divides over the data axes."""
    n, size = data_parallel_size(mesh), x.shape[0] if getattr(x, "ndim", 0) else None
    if size is None or size % n:
        sizes = " x ".join(f"{a}={mesh.shape[a]}" for a in BATCH_AXES if a in mesh.shape)
        raise ValueError(
            f"{what} has a batch of {size} examples, which does not split over the {n} "
            f"data-parallel devices of the mesh ({sizes}): use a batch that is a multiple of {n}"
        )


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


def _rows(tree: PyTree, rule_table: RuleTable, mesh: Mesh):
    """`(name, leaf, spec, role)` of every array leaf."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    specs, roles = _leaf_specs(tree, rule_table, mesh), _leaf_roles(tree)
    return [(path_name(path), leaf, spec, role)
            for (path, leaf), spec, role in zip(flat, specs, roles, strict=True) if spec is not None]


def _nbytes(leaf) -> int:
    return math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize


def bytes_per_device(tree: PyTree, rule_table: RuleTable, mesh: Mesh) -> int:
    """Bytes one device holds for `tree` under the rules (the most loaded device)."""
    return sum(
        math.prod(NamedSharding(mesh, spec).shard_shape(tuple(leaf.shape)))
        * np.dtype(leaf.dtype).itemsize
        for _, leaf, spec, _ in _rows(tree, rule_table, mesh)
    )


def replicated_above(
    tree: PyTree, rule_table: RuleTable, mesh: Mesh, *, min_bytes: int = 1 << 20
) -> list[str]:
    """Names of parameters of at least `min_bytes` that the rules leave fully replicated."""
    return [name for name, leaf, spec, _ in _rows(tree, rule_table, mesh)
            if _nbytes(leaf) >= min_bytes and all(a is None for a in spec)]


_MATRICES = {"linear", "attention_in", "attention_out", "mlp_in", "mlp_out", "patch",
             "position", "table"}


def replicated_shardable(tree: PyTree, rule_table: RuleTable, mesh: Mesh) -> list[str]:
    """Names of matrices (Linear weights, position and token tables, whatever their size) left
    fully replicated although one of their two trailing dimensions divides the "fsdp" axis."""
    n = mesh.shape.get("fsdp", 1)
    return [name for name, leaf, spec, role in _rows(tree, rule_table, mesh)
            if n > 1 and role in _MATRICES and all(a is None for a in spec)
            and any(d % n == 0 for d in tuple(leaf.shape)[-2:])]


def check_fsdp(
    tree: PyTree, rule_table: RuleTable, mesh: Mesh, *, min_bytes: int = 1 << 20
) -> None:
    """Raises if the rules replicate a parameter of `min_bytes` or more, or a matrix of any size
    that could be sharded over "fsdp" (a rule-table bug)."""
    missed = replicated_above(tree, rule_table, mesh, min_bytes=min_bytes)
    if missed:
        raise ValueError(
            f"{len(missed)} parameters >= {min_bytes} bytes are replicated under these rules: "
            f"{missed[:5]}: add a rule for them or make their dimensions divide the mesh"
        )
    shardable = replicated_shardable(tree, rule_table, mesh)
    if shardable:
        raise ValueError(
            f"{len(shardable)} matrices are replicated under these rules although a dimension "
            f"divides the fsdp axis: {shardable[:5]}: add a rule (a sharding.Role or a path "
            "regex) for them"
        )


def report(tree: PyTree, rule_table: RuleTable, mesh: Mesh) -> str:
    """A table of every parameter, its shape, its spec and its bytes per device."""
    rows = []
    for name, leaf, spec, _ in _rows(tree, rule_table, mesh):
        shape = tuple(leaf.shape)
        shard_shape = NamedSharding(mesh, spec).shard_shape(shape)
        per_device = math.prod(shard_shape) * np.dtype(leaf.dtype).itemsize
        rows.append((name, str(shape), str(tuple(spec)), per_device))
    width = max(len(r[0]) for r in rows)
    lines = [f"mesh {dict(mesh.shape)}", f"{'parameter':<{width}}  {'shape':<18} {'spec':<28} bytes/device"]
    lines += [f"{n:<{width}}  {s:<18} {p:<28} {b:>12,}" for n, s, p, b in rows]
    total = sum(_nbytes(leaf) for _, leaf, _, _ in _rows(tree, rule_table, mesh))
    per_device = sum(r[3] for r in rows)
    lines.append(f"total {total:,} bytes; {per_device:,} per device ({per_device / total:.3f} of all)")
    return "\n".join(lines)
