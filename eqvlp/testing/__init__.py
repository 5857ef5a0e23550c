"""Property-testing tools for contrastive losses: hypothesis strategies and a reusable suite.

- `strategies`: embedding batches (unit-norm, near-duplicate, aligned, antipodal, repeated rows;
  batch sizes 1..N), ordinary and extreme scales and biases, per-row norms.
- `LossProperties`: subclass it in a test module, set `loss`, and pytest runs permutation
  equivariance, swap symmetry, norm invariance, finiteness at extreme scale/bias, equality with a
  reference, and closed-form values, 200 hypothesis examples each.
- `check_*`: the same properties as plain functions on concrete inputs.
- `closed_forms`: exact losses on aligned / orthogonal batches.
- `unchecked()`: a block without the suite's jaxtyping hook, to test eqvlp's own error messages.

Requires `hypothesis` (a test dependency of eqvlp, not a runtime one).
See docs/tutorial_property_testing.md.
"""

from eqvlp.testing import closed_forms, strategies
from eqvlp.testing.properties import (
    LossProperties,
    assert_close,
    check_closed_form,
    check_finite_at,
    check_matches_reference,
    check_norm_invariance,
    check_permutation_equivariance,
    check_swap_symmetry,
    value_and_grads,
)
from eqvlp.testing.typecheck import unchecked

__all__ = [
    "LossProperties",
    "assert_close",
    "check_closed_form",
    "check_finite_at",
    "check_matches_reference",
    "check_norm_invariance",
    "check_permutation_equivariance",
    "check_swap_symmetry",
    "closed_forms",
    "strategies",
    "unchecked",
    "value_and_grads",
]
