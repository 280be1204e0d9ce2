"""`talkcodec train` under torchrun: two CPU processes (gloo) train a few steps on their own
shares of the batches and end with the same weights, written once (training/distributed.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from talkcodec.training.distributed import batch_indices
from talkcodec.weights import load_checkpoint

SCRIPT = """
import sys
from talkcodec.training.trainer import train
train(sys.argv[1], {"codec": sys.argv[3], "model": "tiny", "epochs": 1, "steps_per_epoch": 3, "batch_size": 2,
                    "held_out": [], "val_per_clip": 2, "gan_start": 1}, cache_dir=sys.argv[2], progress=False)
"""


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_takes_its_own_batches_and_as_many(world):
    shares = [batch_indices(rank, world, 0, 4, 2) for rank in range(world)]
    assert all(len(share) == 4 * 2 for share in shares)
    assert sorted(i for share in shares for i in share) == list(range(4 * 2 * world))  # each sample once
    assert batch_indices(1, world, 3, 4, 2) == shares[1][-2:]  # resuming at step 3: the last batch


def test_two_cpu_processes_under_torchrun_end_with_equal_weights(cache_folder, tmp_path, codec="apb"):
    run = tmp_path / "run"
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(run), str(cache_folder), codec],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((run / "run.json").read_text())
    sums = info["rank_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]  # both ranks hold the same weights
    _, checkpoint = load_checkpoint(run / "checkpoint")
    assert checkpoint["step"] == 3 and (run / "weights.safetensors").exists()
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 3] and history[-1]["validation"]  # validated once, by rank 0
