"""Linear and few-shot probes: multinomial logistic regression on frozen features.

The CLIP paper's protocol: logistic regression trained full-batch with L-BFGS on the features
as they are (no standardisation: CLIP probes its L2-normalised features), the L2 strength picked
on a validation split carved from the training set (stratified), then the model retrained on
train + validation at that strength.

The objective, with a bias that is not regularised, over n (weighted) samples:

    loss(W, b) = (1 / n) * sum_i CE(x_i @ W + b, y_i) + (l2 / 2) * ||W||^2

scikit-learn's `LogisticRegression(C=...)` minimises `C * sum_i CE + ||W||^2 / 2`, the same
solution when `C = 1 / (l2 * n)`.

Every fit is one compiled `jax.lax.while_loop` of `optax.lbfgs` steps (stopping at `max_iter`
or when the gradient norm drops below 1e-5), with `l2` a traced argument: the whole sweep
compiles once. Few-shot fits are padded with zero-weight rows to one size, so every k and seed
shares one compilation too.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from jaxtyping import Array, Float, Int

from eqvlp.eval.zeroshot import check_labels

__all__ = ["DEFAULT_L2_GRID", "FEW_SHOT_L2", "few_shot", "few_shot_indices", "linear_probe"]

DEFAULT_L2_GRID = tuple(float(v) for v in np.logspace(-6, 2, 9))
# Few-shot sets are too small to carve a validation split from (one example per class at k=1),
# so they use one fixed L2. On L2-normalised features, 1e-3 sits between the separable,
# unregularised regime (weights grow until max_iter) and the centroid-like regime of strong L2.
FEW_SHOT_L2 = 1e-3
_TOL = 1e-5

Params = tuple[Float[Array, "dim classes"], Float[Array, " classes"]]


def linear_probe(
    train_x: Float[np.ndarray, "n dim"],
    train_y: Int[np.ndarray, " n"],
    test_x: Float[np.ndarray, "n_test dim"],
    test_y: Int[np.ndarray, " n_test"],
    *,
    num_classes: int | None = None,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    val_fraction: float = 0.2,
    max_iter: int = 1000,
    seed: int = 0,
) -> dict:
    """Test accuracy of logistic regression with its L2 strength chosen on a validation split.

    **Arguments:**

    - `train_x`, `train_y`, `test_x`, `test_y`: features `(n, dim)` and integer labels.
    - `num_classes`: default `1 + max label`.
    - `l2_grid`: strengths tried, each fitted on the training part (warm-started from the
      previous, strongest first) and scored on the validation part; the best wins (ties go
      to the stronger). A single value skips the validation split.
    - `val_fraction`: the share of each class held out (at least one example stays in train).
    - `max_iter`: L-BFGS iterations per fit; `seed`: the split.

    **Returns:** `accuracy` (test, after retraining on all training data), `l2` (chosen),
    `l2_grid` (ascending) and `val_accuracy` (aligned with it; `None` for a single value),
    `iterations` (of the final fit).
    """
    fn = "linear_probe"
    x, y, tx, ty, num_classes = _check_data(fn, train_x, train_y, test_x, test_y, num_classes)
    grid = sorted({float(v) for v in l2_grid})
    if not grid or grid[0] < 0:
        raise ValueError(f"{fn}: l2_grid must hold non-negative strengths, got {l2_grid!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"{fn}: val_fraction must be in (0, 1), got {val_fraction}: try 0.2")
    xs, onehot = jnp.asarray(x), jnp.asarray(np.eye(num_classes, dtype=np.float32)[y])
    everything = jnp.ones(len(y), jnp.float32)
    params = _zeros(x.shape[1], num_classes)
    val_accuracy = None
    if len(grid) > 1:
        val = _stratified_split(fn, y, val_fraction, seed)
        train_only = jnp.asarray(~val, jnp.float32)
        fits, val_accuracy = {}, {}
        for l2 in reversed(grid):  # strongest first: each fit starts from the last solution
            params, _ = _fit(xs, onehot, train_only, l2, params, max_iter=max_iter)
            fits[l2] = params
            val_accuracy[l2] = _accuracy(params, x[val], y[val])
        l2 = max(grid, key=lambda v: (val_accuracy[v], v))
        params, val_accuracy = fits[l2], [val_accuracy[v] for v in grid]
    else:
        l2 = grid[0]
    params, iterations = _fit(xs, onehot, everything, l2, params, max_iter=max_iter)
    return {
        "accuracy": _accuracy(params, tx, ty),
        "l2": l2,
        "l2_grid": grid,
        "val_accuracy": val_accuracy,
        "iterations": int(iterations),
    }


def few_shot(
    train_x: Float[np.ndarray, "n dim"],
    train_y: Int[np.ndarray, " n"],
    test_x: Float[np.ndarray, "n_test dim"],
    test_y: Int[np.ndarray, " n_test"],
    *,
    shots: Sequence[int] = (1, 5, 10),
    seeds: Sequence[int] = (0, 1, 2),
    num_classes: int | None = None,
    l2: float = FEW_SHOT_L2,
    max_iter: int = 1000,
) -> dict[int, dict]:
    """k-shot linear probes: k training examples per class, one fit per seed.

    The L2 strength is fixed (`FEW_SHOT_L2` by default); see the module docstring. For one
    seed, the k-shot set of a smaller k is a subset of that of a larger k.

    **Returns:** `{k: {"mean", "std", "accuracies", "num_train"}}`: test accuracy mean and
    standard deviation (`ddof=0`) over `seeds`, the per-seed accuracies, and `k * C`.
    """
    fn = "few_shot"
    x, y, tx, ty, num_classes = _check_data(fn, train_x, train_y, test_x, test_y, num_classes)
    shots, seeds = tuple(shots), tuple(seeds)
    if not shots or not all(isinstance(k, (int, np.integer)) and k >= 1 for k in shots):
        raise ValueError(f"{fn}: shots must be positive ints, got {shots}: e.g. (1, 5, 10)")
    if not seeds:
        raise ValueError(f"{fn}: seeds is empty: pass at least one, e.g. (0, 1, 2)")
    if l2 < 0:
        raise ValueError(f"{fn}: l2 must be non-negative, got {l2}")
    size = max(shots) * num_classes  # one padded size: one compilation for every fit
    out = {}
    for k in shots:
        accuracies = []
        for seed in seeds:
            idx = few_shot_indices(y, int(k), seed=int(seed), num_classes=num_classes)
            xs = np.zeros((size, x.shape[1]), np.float32)
            onehot = np.zeros((size, num_classes), np.float32)
            weights = np.zeros(size, np.float32)
            xs[:len(idx)] = x[idx]
            onehot[np.arange(len(idx)), y[idx]] = 1
            weights[:len(idx)] = 1  # the rest is padding
            params, _ = _fit(jnp.asarray(xs), jnp.asarray(onehot), jnp.asarray(weights), l2,
                             _zeros(x.shape[1], num_classes), max_iter=max_iter)
            accuracies.append(_accuracy(params, tx, ty))
        out[int(k)] = {
            "mean": float(np.mean(accuracies)),
            "std": float(np.std(accuracies)),
            "accuracies": accuracies,
            "num_train": int(k) * num_classes,
        }
    return out


def few_shot_indices(
    labels: Int[np.ndarray, " n"], k: int, *, seed: int, num_classes: int | None = None
) -> Int[np.ndarray, " picked"]:
    """Sorted indices of `k` examples of each class, drawn without replacement.

    Each class's examples are shuffled once per `(seed, class)`, and the first `k` taken, so a
    smaller k gives a subset of a larger one.
    """
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    picked = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < k:
            raise ValueError(
                f"few_shot: class {c} has {len(members)} training example(s), fewer than "
                f"k={k}: use smaller shots or drop the class"
            )
        picked.append(np.random.default_rng([seed, c]).permutation(members)[:k])
    return np.sort(np.concatenate(picked))


@functools.partial(jax.jit, static_argnames="max_iter")
def _fit(
    x: Float[Array, "n dim"],
    onehot: Float[Array, "n classes"],
    weights: Float[Array, " n"],
    l2: float | Float[Array, ""],
    init: Params,
    *,
    max_iter: int,
) -> tuple[Params, Int[Array, ""]]:
    """L-BFGS on the weighted, L2-regularised cross-entropy; returns the parameters and the
    number of iterations."""

    def loss(params):
        w, b = params
        logits = jnp.dot(x, w, precision=jax.lax.Precision.HIGHEST) + b
        ce = jax.nn.logsumexp(logits, axis=1) - jnp.sum(onehot * logits, axis=1)
        return jnp.sum(weights * ce) / jnp.sum(weights) + 0.5 * l2 * jnp.sum(w * w)

    optimizer = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = optimizer.update(grad, state, params, value=value, grad=grad,
                                          value_fn=loss)
        return optax.apply_updates(params, updates), state

    def going(carry):
        _, state = carry
        count = otu.tree_get(state, "count")
        norm = otu.tree_norm(otu.tree_get(state, "grad"))
        return (count == 0) | ((count < max_iter) & (norm >= _TOL))

    params, state = jax.lax.while_loop(going, step, (init, optimizer.init(init)))
    return params, otu.tree_get(state, "count")


def _accuracy(params: Params, x: np.ndarray, y: np.ndarray) -> float:
    w, b = (np.asarray(p, np.float64) for p in params)
    return float(np.mean(np.argmax(x @ w + b, axis=1) == y))


def _zeros(dim: int, num_classes: int) -> Params:
    return jnp.zeros((dim, num_classes), jnp.float32), jnp.zeros(num_classes, jnp.float32)


def _stratified_split(fn: str, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean validation mask holding `round(fraction * n_c)` of each class (at least one of
    each class stays in train)."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        take = min(int(round(fraction * len(members))), len(members) - 1)
        val[members[:take]] = True
    if not val.any():
        raise ValueError(
            f"{fn}: the validation split is empty ({len(labels)} training examples, "
            f"val_fraction={fraction}): pass more data, a larger val_fraction, or a single l2"
        )
    return val


def _check_data(fn, train_x, train_y, test_x, test_y, num_classes):
    x, tx = np.asarray(train_x), np.asarray(test_x)
    for name, a in (("train_x", x), ("test_x", tx)):
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{fn}: {name} must be float (n, dim) features, got {a.dtype} {a.shape}")
        if a.shape[0] == 0:
            raise ValueError(f"{fn}: {name} is empty")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{fn}: {name} contain NaN or inf: check the features")
    if x.shape[1] != tx.shape[1]:
        raise ValueError(
            f"{fn}: train_x have dim {x.shape[1]} but test_x have dim {tx.shape[1]}: extract "
            "both with the same model"
        )
    if num_classes is None:
        top = max(np.max(np.asarray(train_y), initial=0), np.max(np.asarray(test_y), initial=0))
        num_classes = int(top) + 1
    if num_classes < 2:
        raise ValueError(f"{fn}: needs at least 2 classes, got num_classes={num_classes}")
    y = check_labels(fn, "train_y", train_y, x.shape[0], num_classes)
    ty = check_labels(fn, "test_y", test_y, tx.shape[0], num_classes)
    return x.astype(np.float32), y, tx.astype(np.float32), ty, num_classes
