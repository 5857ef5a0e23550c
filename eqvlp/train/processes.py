"""The processes of a multi-process run: start-up, barriers and agreement, each with a timeout.

A peer that never starts, a process that died, or a directory that is not shared between
processes must end the run with an error that says which process and what is missing, never
hang. Everything here goes through the coordination service of `jax.distributed` (its barriers
and key-value store take timeouts; device collectives do not), and is a no-op in one process.

The timeout (seconds) is `EQVLP_DISTRIBUTED_TIMEOUT` (default 600), set by
`eqvlp train --distributed-timeout` or `set_timeout`.
"""

import itertools
import os
import re
import sys
import threading

import jax
import numpy as np

DEFAULT_TIMEOUT_S = 600.0
_counter = itertools.count()


def timeout() -> float:
    """Seconds a process waits for its peers (`EQVLP_DISTRIBUTED_TIMEOUT`, default 600)."""
    text = os.environ.get("EQVLP_DISTRIBUTED_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"EQVLP_DISTRIBUTED_TIMEOUT={text!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"EQVLP_DISTRIBUTED_TIMEOUT must be > 0 seconds, got {value}")
    return value


def set_timeout(seconds: float) -> None:
    """Sets the timeout of every later barrier of this process (and of its child processes)."""
    if not seconds > 0:
        raise ValueError(f"the distributed timeout must be > 0 seconds, got {seconds}")
    os.environ["EQVLP_DISTRIBUTED_TIMEOUT"] = str(float(seconds))


def initialize(coordinator: str, num_processes: int, process_id: int,
               timeout_s: float | None = None) -> None:
    """`jax.distributed.initialize`, ended after `timeout_s` with a clear error when a peer (or
    the coordinator) never comes: XLA would otherwise wait, then abort with a bare
    `DEADLINE_EXCEEDED` from C++ that Python cannot catch."""
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id {process_id} is not in 0..{num_processes - 1} "
                         f"(--num-processes {num_processes})")
    timeout_s = timeout() if timeout_s is None else timeout_s
    done = threading.Event()

    def watchdog():
        if done.wait(timeout_s):
            return
        role = ("the coordinator, waiting for the other processes to connect"
                if process_id == 0 else f"connecting to the coordinator at {coordinator}")
        sys.stderr.write(
            f"eqvlp: process {process_id} of {num_processes}: not every process joined within "
            f"{timeout_s:g} s (this process is {role}). Start all {num_processes} processes with "
            f"the same --coordinator {coordinator} and --num-processes {num_processes}, each with "
            f"its own --process-id in 0..{num_processes - 1}, or raise --distributed-timeout.\n")
        sys.stderr.flush()
        os._exit(3)

    threading.Thread(target=watchdog, daemon=True, name="eqvlp-distributed-watchdog").start()
    try:
        # XLA's own deadline comes later, so that the watchdog's message is the one shown
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   initialization_timeout=int(timeout_s) + 30)
    finally:
        done.set()


def _client():
    from jax._src import (
        distributed,  # the coordination-service client; no public handle yet
    )

    return getattr(distributed.global_state, "client", None)


def _late_processes(message: str) -> list[int]:
    """Process ids named in XLA's barrier timeout message ('Some timed out task names: 1')."""
    if "task names" not in message:
        return []
    tail = message.split("task names:", 1)[-1].split("RPC:", 1)[0]
    return sorted({int(n) for n in re.findall(r"(?:task[:/]|^|\s)(\d+)\b", tail)})


def sync(name: str, what: str, timeout_s: float | None = None) -> None:
    """A barrier of all processes: raises `TimeoutError` naming the processes that did not
    reach it within `timeout_s` (and `what` they were doing)."""
    if jax.process_count() == 1:
        return
    timeout_s = timeout() if timeout_s is None else timeout_s
    client = _client()
    if client is None:  # no coordination service (a runtime set up without jax.distributed)
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    try:
        client.wait_at_barrier(f"{name}#{next(_counter)}", int(timeout_s * 1000))
    except jax.errors.JaxRuntimeError as error:  # DEADLINE_EXCEEDED, or a failed barrier
        late = _late_processes(str(error))
        who = f"process(es) {late}" if late else "some process"
        raise TimeoutError(
            f"process {jax.process_index()}: {who} did not reach the barrier '{what}' within "
            f"{timeout_s:g} s (crashed, stuck, or started late): see their logs; the timeout is "
            f"--distributed-timeout / EQVLP_DISTRIBUTED_TIMEOUT") from None


def agree(name: str, problem: str | None, timeout_s: float | None = None) -> dict[int, str]:
    """Every process's `problem` (None: none), exchanged through the coordination service:
    `{process: problem}` of the processes that had one, the same on every process, so that
    all of them take the same decision (e.g. fall back to an older checkpoint)."""
    if jax.process_count() == 1:
        return {0: problem} if problem else {}
    timeout_s = timeout() if timeout_s is None else timeout_s
    client = _client()
    if client is None:
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(problem is None))
        return {int(i): (problem if i == jax.process_index() else "see its log")
                for i in np.flatnonzero(np.asarray(flags) == 0)}
    key = f"eqvlp/{name}/{next(_counter)}"
    client.key_value_set(f"{key}/{jax.process_index()}", problem or "")
    sync(f"{key}/set", f"{name}: exchange results", timeout_s)
    found = {}
    for path, value in client.key_value_dir_get(key):
        process = int(path.rsplit("/", 1)[-1])
        if value:
            found[process] = value
    return dict(sorted(found.items()))


def check_shared(directory, what: str) -> None:
    """Raises `OSError` on every process unless all of them see the same `directory` (a run
    or checkpoint directory on a disk local to each host would split or hang the run)."""
    if jax.process_count() == 1:
        return
    import secrets
    from pathlib import Path

    probe, nonce = None, None
    if jax.process_index() == 0:
        nonce = secrets.token_hex(8)
        probe = Path(directory) / f".eqvlp-shared-{nonce}"
        probe.write_text(nonce)
    nonce = broadcast(f"shared-{what}", nonce)
    path = Path(directory) / f".eqvlp-shared-{nonce}"
    try:
        seen = path.read_text() == nonce
    except OSError:
        seen = False
    missing = agree(f"shared-{what}", None if seen else f"does not see {path}")
    if probe is not None:
        probe.unlink(missing_ok=True)
    if missing:
        raise OSError(
            f"{what} {directory} is not shared between processes: process(es) "
            f"{sorted(missing)} cannot see what process 0 wrote there. Put the run directory "
            "(--workdir) on a filesystem every process mounts at the same path")


def broadcast(name: str, value: str | None, timeout_s: float | None = None) -> str:
    """Process 0's `value` (a string) on every process."""
    if jax.process_count() == 1:
        return value or ""
    timeout_s = timeout() if timeout_s is None else timeout_s
    client = _client()
    if client is None:
        raise RuntimeError("broadcast needs jax.distributed.initialize (a coordination service)")
    key = f"eqvlp/{name}/{next(_counter)}"
    if jax.process_index() == 0:
        client.key_value_set(key, value or "")
    try:
        return client.blocking_key_value_get(key, int(timeout_s * 1000))
    except jax.errors.JaxRuntimeError:
        raise TimeoutError(f"process {jax.process_index()}: process 0 did not publish '{name}' "
                           f"within {timeout_s:g} s (crashed or stuck): see its log") from None
