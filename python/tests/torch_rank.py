# SPDX-License-Identifier: MIT
"""One rank of test_comm.py's two-process torch.distributed test (not collected by pytest):
python3 torch_rank.py RANK WORLD STORE. Joins a Gloo group through a file store, learns its own
traffic, syncs through sona.Comm.from_torch (sketch, then exact) and prints one line:
"rank <allreduce> <allgather hex> <ranks> <weight> <digest of its outputs>"."""
import hashlib
import os
import sys

import numpy as np
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sona  # noqa: E402
from helpers import SynthTask  # noqa: E402

H, LAYERS = 32, 4


def main():
    rank, world, store = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        with sona.Engine(H, background_thread=False, device_apply=0, seed=1 + rank,
                         base_layers=LAYERS, base_rank=4, loop_b_threshold=2**30,
                         loop_b_interval_ms=0) as e, sona.Comm.from_torch() as comm:
            task, rng = SynthTask(H, seed=20 + rank), np.random.default_rng(rank)
            for _ in range(3 + rank):  # 30, 40, ... trajectories: different weights
                task.run(e, 10, rng)
                e.force_learn()
            a = np.full(3, rank + 1, np.float32)
            comm.allreduce_sum(a)
            g = comm.allgather(bytes([rank]) * 4)
            e.sync(comm, method="sketch")
            r = e.sync(comm, method="exact")
            probe = np.random.default_rng(5).standard_normal((8, H)).astype(np.float32)
            out = b"".join(e.apply_layer(probe, layer).tobytes() for layer in range(LAYERS))
            out += e.apply_batch(probe, 0).tobytes()
            print(rank, a[0], g.hex(), r.ranks, r.weight, hashlib.sha256(out).hexdigest(),
                  flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
