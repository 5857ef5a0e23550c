"""eqvlp.benchmarking: rates, XLA memory (single and per device), sweeps, comparisons, the CLI."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from eqvlp.benchmarking import (
    BenchmarkError,
    Sweep,
    check_loss,
    compare_attention,
    compare_losses,
    matmul_peak,
    measure,
    sweep,
)
from eqvlp.benchmarking.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def peak():
    return matmul_peak([(256, 256, 256)], repeats=2)


def outer_then_matmul(x, w):
    """Needs its B x B float32 outer product in memory: it is a matmul operand."""
    t = x[:, None] * x[None, :]
    return jnp.sum(t @ w)


def test_matmul_of_known_flops_gives_a_plausible_rate(peak):
    m, k, n = 128, 64, 256
    a = jax.random.normal(jax.random.key(0), (m, k))
    b = jax.random.normal(jax.random.key(1), (k, n))
    given = measure(jnp.matmul, a, b, grad=False, flops=2 * m * k * n, repeats=3)
    assert given.flops_source == "given" and given.flops == 2 * m * k * n
    assert 0 < given.flops_per_second < 100 * peak.flops_per_second
    assert given.seconds_min <= given.seconds <= given.seconds_max and len(given.times) == 3
    # without flops=, XLA's cost analysis counts the same 2 m k n
    counted = measure(jnp.matmul, a, b, grad=False, repeats=1)
    assert counted.flops_source == "cost_analysis"
    assert counted.flops == pytest.approx(2 * m * k * n, rel=0.01)
    assert peak.to_json()["best_gflops"] > 0 and "(256x256)@(256x256) (best)" in peak.to_markdown()


@pytest.mark.parametrize("grad", [False, True])
def test_memory_covers_a_b_by_b_temporary(grad):
    batch = 256
    x = jax.random.normal(jax.random.key(0), (batch,))
    m = measure(outer_then_matmul, x, jnp.ones((batch, 4)), grad=grad, repeats=1)
    assert m.peak_bytes >= 4 * batch**2
    assert m.devices == 1 and m.grad is grad
    assert m.value == pytest.approx(float(outer_then_matmul(x, jnp.ones((batch, 4)))), rel=1e-5)
    row = m.to_json()
    assert json.loads(json.dumps(row))["peak_bytes"] == m.peak_bytes
    assert "| outer_then_matmul |" in m.to_markdown()


def test_sharded_function_reports_per_device_memory():
    batch = 512
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    x = jax.random.normal(jax.random.key(0), (batch,))
    w = jnp.ones((batch, 4))
    whole = measure(outer_then_matmul, x, w, grad=False, repeats=1)
    sharded = measure(outer_then_matmul, jax.device_put(x, NamedSharding(mesh, PartitionSpec("data"))),
                      jax.device_put(w, NamedSharding(mesh, PartitionSpec())), grad=False, repeats=1)
    assert sharded.devices == 8
    # each device holds its (B/8, B) block of the outer product: per device, not the sum
    assert 4 * batch * batch / 8 <= sharded.peak_bytes <= whole.peak_bytes / 2
    assert sharded.value == pytest.approx(whole.value, rel=1e-5)
    # the cost analysis is per device too; measure reports the whole computation's FLOPs
    assert sharded.flops == pytest.approx(whole.flops, rel=0.05)


def test_measure_rejects_what_it_cannot_differentiate():
    with pytest.raises(BenchmarkError, match="needs fn to return a float scalar"):
        measure(lambda x: x * 2, jnp.ones(3))
    with pytest.raises(BenchmarkError, match="no argument is a floating-point array"):
        measure(lambda i: jnp.sum(i) * 1.0, jnp.arange(3))


def test_sweep_grows_with_batch_and_compares_with_a_reference(peak):
    def make_args(batch):
        return jax.random.normal(jax.random.key(batch), (batch,)), jnp.ones((batch, 4))

    result = sweep({"outer": outer_then_matmul, "half": lambda x, w: 0.5 * outer_then_matmul(x, w)}, make_args,
                   [64, 512], repeats=3, peak=peak, reference="outer")
    assert isinstance(result, Sweep) and [m.params["batch"] for m in result.rows] == [64, 64, 512, 512]
    small, large = result.rows[0], result.rows[2]
    assert large.peak_bytes >= 32 * small.peak_bytes  # (512 / 64)^2 = 64 times the B x B temporary
    assert large.seconds > small.seconds
    assert result.growth()[2][1] == large.peak_bytes / small.peak_bytes
    assert [r["name"] for r in result.relative()] == ["half", "half"]
    text = result.to_markdown()
    assert "time vs prev batch" in text and "Relative to `outer`" in text and "% matmul" in text
    assert json.loads(json.dumps(result.to_json()))["rows"][3]["batch"] == 512


def test_sweep_over_a_keyword_grid_records_it():
    from eqvlp.benchmarking import loss_inputs
    from eqvlp.losses import chunked_sigmoid_loss

    result = sweep(chunked_sigmoid_loss, lambda b: loss_inputs(b, 8), [32], grid={"chunk_size": [8, 32]},
                   repeats=1, params={"dim": 8})
    assert [m.params["chunk_size"] for m in result.rows] == [8, 32]
    assert result.rows[0].value == pytest.approx(result.rows[1].value, rel=1e-5)
    assert "| function | batch | chunk_size |" in result.to_markdown()


def test_compare_losses_checks_the_users_loss_before_compiling(peak):
    with pytest.raises(BenchmarkError, match=r"cannot be called as loss\(zimg, ztxt, scale, bias\)"):
        compare_losses(lambda zimg, ztxt: jnp.sum(zimg), batch_sizes=[8], dim=4, peak=peak)
    with pytest.raises(BenchmarkError, match="must return a float scalar"):
        check_loss(lambda zimg, ztxt, scale, bias: zimg, "rows")
    with pytest.raises(BenchmarkError, match="not multiples of 8"):
        compare_losses(None, batch_sizes=[12], dim=4, devices=8, peak=peak)


def test_compare_attention_includes_the_users_function(peak):
    def my_attention(q, k, v):
        return jax.nn.dot_product_attention(q, k, v)

    result = compare_attention(my_attention, seqs=[16], heads=2, head_dim=8, repeats=1, peak=peak)
    assert [m.name for m in result.rows] == ["xla", "my_attention"]
    assert any("pallas left out" in n for n in result.notes)
    assert result.rows[0].peak_bytes and result.relative()[0]["name"] == "my_attention"
    with pytest.raises(BenchmarkError, match="must return an array of q's shape"):
        compare_attention(lambda q, k, v: q[:, :1], seqs=[16], peak=peak)


BAD_LOSSES = {
    "missing module": ("no_such_module_xyz:loss", "no module named 'no_such_module_xyz'"),
    "missing attribute": ("bench_user_a:nope", "module bench_user_a has no attribute 'nope'"),
    "not callable": ("bench_user_b:CONSTANT", "bench_user_b.CONSTANT is not callable"),
    "wrong signature": ("bench_user_c:two_args", "cannot be called as loss(zimg, ztxt, scale, bias)"),
    "not MODULE:FUNCTION": ("bench_user_d", "expected MODULE:FUNCTION"),
}


@pytest.mark.parametrize("case", list(BAD_LOSSES))
def test_cli_bad_loss_path_exits_2_with_one_line(case, tmp_path, monkeypatch, capsys):
    spec, message = BAD_LOSSES[case]
    module = spec.split(":")[0]
    if case != "missing module":
        (tmp_path / f"{module}.py").write_text("CONSTANT = 3\n\ndef two_args(zimg, ztxt):\n    return zimg.sum()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["losses", "--loss", spec, "--batch-sizes", "8", "--dim", "4", "--repeats", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and message in err and err.startswith("python -m eqvlp.benchmarking losses: error:")


def test_cli_attention_that_cannot_take_causal_exits_2(tmp_path, monkeypatch, capsys):
    (tmp_path / "bench_user_attn.py").write_text("def attend(q, k, v):\n    return q\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["attention", "--attention", "bench_user_attn:attend", "--causal", "--seqs", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be called as attn(q, k, v, causal=True)" in err


USER_LOSS = '''
    import jax
    import jax.numpy as jnp

    def hard_negative_sigmoid(zimg, ztxt, scale, bias):
        logits = scale * zimg @ ztxt.T + bias
        eye = jnp.eye(zimg.shape[0], dtype=bool)
        hardest = jnp.max(jnp.where(eye, -jnp.inf, logits), axis=1)
        return jnp.mean(jax.nn.softplus(-jnp.diagonal(logits)) + jax.nn.softplus(hardest))
'''


def test_cli_compares_a_users_loss_with_eqvlps(tmp_path):
    (tmp_path / "my_losses.py").write_text(textwrap.dedent(USER_LOSS))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    out_json = tmp_path / "out.json"
    run = subprocess.run(
        [sys.executable, "-m", "eqvlp.benchmarking", "losses", "--loss", "my_losses:hard_negative_sigmoid",
         "--batch-sizes", "16", "32", "--dim", "8", "--variants", "reference", "chunked", "ring",
         "--chunk-size", "8", "--repeats", "1", "--matmul-size", "256", "--json", str(out_json)],
        check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    table = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    names = {line.split("|")[1].strip() for line in table}
    assert {"reference", "chunked", "ring", "my_losses:hard_negative_sigmoid"} <= names
    assert "fused (Pallas) left out" in run.stdout
    assert "| 32 | my_losses:hard_negative_sigmoid |" in run.stdout  # the ratio to eqvlp's reference
    rows = json.loads(out_json.read_text())["rows"]
    by = {(r["name"], r["batch"]): r for r in rows}
    assert by[("ring", 32)]["devices"] == 8
    assert by[("my_losses:hard_negative_sigmoid", 32)]["peak_bytes"] > 0
    # same inputs for every row: eqvlp's variants agree on the loss value
    assert by[("chunked", 32)]["value"] == pytest.approx(by[("reference", 32)]["value"], rel=1e-5)
