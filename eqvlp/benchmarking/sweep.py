"""Many measurements at growing sizes: how time and memory scale, and how variants compare.

`sweep` measures every function at every size (and every combination of a keyword grid, such as
chunk or block sizes) on the same inputs, and returns a `Sweep`: the rows, the matmul peak they
are read against, and a Markdown report whose columns show growth from one size to the next and,
when a reference function is named, each row's time and memory relative to it.
"""

import dataclasses
import functools
import itertools
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from eqvlp.benchmarking.measure import BenchmarkError, Measurement, measure
from eqvlp.benchmarking.peak import MatmulPeak

__all__ = ["Failure", "Sweep", "machine", "sweep"]


@dataclasses.dataclass(frozen=True)
class Failure:
    """A function that could not run at one size (e.g. cuDNN attention on a CPU)."""

    name: str
    params: Mapping[str, Any]
    error: str

    def to_json(self) -> dict:
        return {"name": self.name, **dict(self.params), "error": self.error}


def machine() -> dict:
    """Where a measurement was taken: enough to judge whether two results are comparable."""
    device = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "devices": jax.device_count(),
        "jax": jax.__version__,
    }


def _mib(m: Measurement) -> str:
    if m.peak_bytes is None:
        return "n/a"
    value = m.peak_bytes / 2**20
    mib = f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.3f}"
    return f"{mib} / device" if m.devices > 1 else mib


def _ms(seconds: float) -> str:
    ms = 1e3 * seconds
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{a / b:.2f}x"


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Rows of `Measurement`s from one run, with what is needed to read them.

    **Fields:**

    - `rows`: measurements in the order taken (sizes outer, functions inner).
    - `size`: the name of the swept size in `params` ("batch", "seq").
    - `reference`: the row name other rows are compared with at the same size, or None.
    - `peak`: the matmul rate measured in the same run (the 100% of "% of matmul"), or None.
    - `failures`: functions that raised at some size (kept when `errors="record"`).
    - `notes`: what a reader must know (e.g. variants left out, interpreter-mode kernels).
    - `machine`: where it ran (`eqvlp.benchmarking.machine()`).
    """

    rows: tuple[Measurement, ...]
    size: str = "batch"
    reference: str | None = None
    peak: MatmulPeak | None = None
    failures: tuple[Failure, ...] = ()
    notes: tuple[str, ...] = ()
    machine: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def fraction_of_peak(self, m: Measurement) -> float | None:
        return None if self.peak is None else m.fraction_of(self.peak.flops_per_second)

    def _series_key(self, m: Measurement):
        return m.name, tuple(sorted((k, repr(v)) for k, v in m.params.items() if k != self.size))

    def growth(self) -> dict[int, tuple[float, float | None]]:
        """Row index -> (time, memory) ratio to the previous size of the same function and grid."""
        last: dict = {}
        out = {}
        for i, m in enumerate(self.rows):
            key = self._series_key(m)
            if key in last:
                prev = self.rows[last[key]]
                mem = None if not (m.peak_bytes and prev.peak_bytes) else m.peak_bytes / prev.peak_bytes
                out[i] = (m.seconds / prev.seconds, mem)
            last[key] = i
        return out

    def relative(self) -> list[dict]:
        """Each non-reference row's time and memory over the reference's at the same size."""
        if self.reference is None:
            return []
        refs = {m.params.get(self.size): m for m in self.rows if m.name == self.reference}
        out = []
        for m in self.rows:
            ref = refs.get(m.params.get(self.size))
            if m.name == self.reference or ref is None:
                continue
            mem = None if not (m.peak_bytes and ref.peak_bytes) else m.peak_bytes / ref.peak_bytes
            out.append({"name": m.name, **dict(m.params), "time": m.seconds / ref.seconds, "memory": mem,
                        "devices": m.devices})
        return out

    def to_json(self) -> dict:
        rows = []
        for m in self.rows:
            row = m.to_json()
            fraction = self.fraction_of_peak(m)
            row["pct_matmul"] = None if fraction is None else 100 * fraction
            rows.append(row)
        return {
            "machine": dict(self.machine),
            "size": self.size,
            "reference": self.reference,
            "matmul_peak": None if self.peak is None else self.peak.to_json(),
            "peak_memory_method": "compiled.memory_analysis(): temp + output bytes, arguments excluded "
                                  "(per device for sharded programs)",
            "notes": list(self.notes),
            "rows": rows,
            "failures": [f.to_json() for f in self.failures],
            "relative_to_reference": self.relative(),
        }

    def to_markdown(self) -> str:
        """Notes, the matmul peak, the table of rows, and the ratios to the reference."""
        preamble = self._preamble()
        return "\n\n".join(part for part in (preamble, self._table(), self._relative_table()) if part)

    def _columns(self) -> tuple[bool, list[str], list[str]]:
        """Whether sizes are shown, the labels that vary (columns), and those that do not (said once)."""
        keys = sorted({k for m in self.rows for k in m.params if k != self.size})
        fixed = [k for k in keys if len({repr(m.params.get(k)) for m in self.rows}) == 1]
        return any(self.size in m.params for m in self.rows), [k for k in keys if k not in fixed], fixed

    def _preamble(self) -> str:
        lines = [f"- {n}" for n in self.notes]
        if self.machine:
            mc = self.machine
            lines.append(f"- machine: {mc.get('device')} ({mc.get('backend')}, {mc.get('cpus')} CPUs), "
                         f"jax {mc.get('jax')}")
        if self.peak is not None:
            lines.append(f"- 100% = {self.peak.dtype} matmul {self.peak.best.params['shape']} at "
                         f"{self.peak.flops_per_second / 1e9:.1f} GFLOP/s, measured in this run")
        if any(m.flops_source == "cost_analysis" for m in self.rows):
            lines.append("- FLOPs of some rows are XLA's cost analysis (a loop body counted once)")
        _, _, fixed = self._columns()
        if fixed:
            lines.append("- " + ", ".join(f"{k}={self.rows[0].params[k]}" for k in fixed))
        return "\n".join(lines)

    def _table(self) -> str:
        sized, extra, _ = self._columns()
        keys = ([self.size] if sized else []) + extra
        head = ["function", *keys, "devices", "time ms", "min-max ms", "compile s", "peak MiB", "GFLOP/s",
                "% matmul"] + ([f"time vs prev {self.size}", "memory vs prev"] if sized else [])
        lines = ["| " + " | ".join(head) + " |", "| --- " * (1 + sized) + "| ---: " * (len(head) - 1 - sized) + "|"]
        growth = self.growth()
        for i, m in enumerate(self.rows):
            fraction = self.fraction_of_peak(m)
            cells = [
                m.name, *(str(m.params.get(k, "")) for k in keys), str(m.devices), _ms(m.seconds),
                f"{_ms(m.seconds_min)}-{_ms(m.seconds_max)}", f"{m.compile_seconds:.2f}", _mib(m),
                "n/a" if m.flops is None else f"{m.flops_per_second / 1e9:.1f}",
                "n/a" if fraction is None else f"{100 * fraction:.1f}%",
            ]
            if sized:
                t_growth, m_growth = growth.get(i, (None, None))
                cells += ["" if t_growth is None else f"{t_growth:.2f}x",
                          "" if m_growth is None else f"{m_growth:.2f}x"]
            lines.append("| " + " | ".join(cells) + " |")
        for f in self.failures:
            lines.append(f"| {f.name} | {f.params.get(self.size, '')} | unavailable: {f.error} |")
        return "\n".join(lines)

    def _relative_table(self) -> str:
        relative = self.relative()
        if not relative:
            return ""
        lines = [f"Relative to `{self.reference}` at the same {self.size} (memory per device for sharded rows):",
                 "", f"| {self.size} | function | time | peak memory |", "| ---: | --- | ---: | ---: |"]
        for r in relative:
            mem = "n/a" if r["memory"] is None else f"{r['memory']:.3f}x"
            lines.append(f"| {r.get(self.size, '')} | {r['name']} | {r['time']:.2f}x | {mem} |")
        return "\n".join(lines)


def _grid(grid: Mapping[str, Sequence] | None) -> list[dict]:
    if not grid:
        return [{}]
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def sweep(
    functions: Callable | Mapping[str, Callable],
    make_args: Callable[[int], tuple],
    sizes: Sequence[int],
    *,
    size: str = "batch",
    grid: Mapping[str, Sequence] | None = None,
    params: Mapping[str, Any] | None = None,
    flops: Callable[[int], float] | None = None,
    grad: bool = True,
    argnums: int | Sequence[int] | None = None,
    repeats: int = 3,
    peak: MatmulPeak | None = None,
    reference: str | None = None,
    notes: Sequence[str] = (),
    errors: str = "raise",
    progress: Callable[[Measurement | Failure], None] | None = None,
) -> Sweep:
    """Measures each function at each size (and each `grid` combination) with `measure`.

    **Arguments:**

    - `functions`: one function or `{name: function}`; each is called as `f(*make_args(n))`.
    - `make_args`: size -> the positional inputs, built once per size and shared by all functions.
    - `sizes`: e.g. batch sizes; `size` is their name in `params` and tables ("batch", "seq").
    - `grid`: keyword arguments to sweep too, e.g. `{"chunk_size": [256, 512]}`; every combination
      is bound with `functools.partial` and recorded in the row's `params`.
    - `params`: constant labels recorded in every row (e.g. `{"dim": 512}`).
    - `flops`: size -> FLOPs of one call (default: XLA's cost analysis, see `measure`).
    - `grad`, `argnums`, `repeats`: as for `measure`.
    - `peak`: a `matmul_peak()` from this process, for the "% matmul" column.
    - `reference`: the name other rows are compared with at the same size.
    - `errors`: "raise", or "record" to keep going and list the failure (e.g. a peer kernel that
      this backend lacks).
    - `progress`: called with each row as soon as it is measured.
    """
    if errors not in ("raise", "record"):
        raise BenchmarkError(f"sweep: errors must be 'raise' or 'record', got {errors!r}")
    if callable(functions) and not isinstance(functions, Mapping):
        functions = {getattr(functions, "__name__", "function"): functions}
    if reference is not None and reference not in functions:
        raise BenchmarkError(f"sweep: reference {reference!r} is not one of the functions {list(functions)}")
    if not sizes:
        raise BenchmarkError("sweep needs at least one size")
    rows, failures = [], []
    for n in sizes:
        args = make_args(n)
        for name, fn in functions.items():
            for combo in _grid(grid):
                labels = {size: n, **dict(params or {}), **combo}
                try:
                    row = measure(functools.partial(fn, **combo) if combo else fn, *args, grad=grad,
                                  argnums=argnums, repeats=repeats, name=name, params=labels,
                                  flops=None if flops is None else flops(n))
                except Exception as error:
                    if errors == "raise":
                        raise
                    row = Failure(name, labels, f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
                                  if str(error) else type(error).__name__)
                (rows if isinstance(row, Measurement) else failures).append(row)
                if progress is not None:
                    progress(row)
    return Sweep(rows=tuple(rows), size=size, reference=reference, peak=peak, failures=tuple(failures),
                 notes=tuple(notes), machine=machine())
