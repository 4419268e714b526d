"""One process of the multi-process test.

    python tests/mp_worker.py COORDINATOR NUM_PROCESSES PROCESS_ID OUT.json

joins the others with ``jax.distributed.initialize`` (CPU, gloo collectives), trains the
tiny VGG-11-BN for 3 steps on the fixed synthetic global batches of ``train_helpers``
over every device of every process (each process feeds only its own rows) through the
library's own functions, and writes the losses (process 0) to OUT.json.
"""

from __future__ import annotations

import json
import os
import sys


def main(coordinator: str, num_processes: int, process_id: int, out: str) -> None:
    from vggjax import parallel

    parallel.initialize_distributed(coordinator, num_processes, process_id, cpu_collectives="gloo")
    import jax
    from train_helpers import run_steps

    assert jax.process_count() == num_processes, jax.process_count()
    losses = run_steps("jit", 0).losses
    if process_id == 0:
        with open(out, "w") as f:
            json.dump(
                {
                    "losses": losses.tolist(),
                    "devices": jax.device_count(),
                    "processes": jax.process_count(),
                },
                f,
            )
    jax.distributed.shutdown()


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [here, os.path.dirname(here)]
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
