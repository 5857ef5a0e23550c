"""Two JAX processes read disjoint samples; their global batch is the one-process batch."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from eqvlp.data import DataConfig, Loader, write_shards



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


SCRIPT = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from jax.experimental import multihost_utils
from eqvlp.data import DataConfig, Loader, global_batch
from eqvlp.sharding import make_mesh
config = DataConfig(data=sys.argv[3], image_size=16, batch_size=8, text="render",
                    render_size=(16, 32))
loader = Loader(config)
mesh = make_mesh(data=-1)
steps = []
for _ in range(3):
    batch = global_batch(loader.__next__(), mesh, fields=("image", "index"))
    steps.append({"local": batch["key"],
                  "global": multihost_utils.process_allgather(batch["index"],
                                                              tiled=True).tolist()})
json.dump(steps, open(sys.argv[4], "w"))
"""


def test_two_processes_split_the_global_batch(tmp_path):
    rng = np.random.default_rng(0)
    samples = [{"image": rng.integers(0, 255, (20, 20, 3), np.uint8), "text": f"caption {i}"}
               for i in range(24)]
    write_shards(samples, tmp_path, samples_per_shard=8)
    pattern = str(tmp_path / "{00000..00002}.tar")
    port = free_port()
    env = os.environ | {"JAX_PLATFORMS": "cpu",
                        "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, f"localhost:{port}", str(i),
                               pattern, str(tmp_path / f"p{i}.json")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output[-3000:]
    runs = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
    config = DataConfig(data=pattern, image_size=16, batch_size=8, text="render", render_size=(16, 32))
    single = Loader(config, process_index=0, process_count=1)
    for step in range(3):
        whole = next(single)
        p0, p1 = runs[0][step], runs[1][step]
        assert not set(p0["local"]) & set(p1["local"])  # no sample read twice
        assert sorted(p0["local"] + p1["local"]) == sorted(whole["key"])
        assert p0["global"] == p1["global"]  # one global array, seen alike by both
        assert sorted(p0["global"]) == sorted(whole["index"].tolist())
