"""loom.distributed: data-parallel training over the GPUs of one host or many, through NCCL.

    loom.train(net, X, Y, devices=4)      # spawns 4 ranks, returns when they finish
    loom train CONFIG --data F --gpus 4   # the same from the command line

or, under a launcher that sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (torchrun, srun):

    loom.distributed.init(); loom.train(net, X, Y); loom.distributed.shutdown()

In deterministic mode the weights are bit-identical on any number of GPUs and on the CPU
(docs/distributed.md).
"""
from .data_parallel import DataParallel, shard
from .training import train
from .world import Group, World, current, init, shutdown

__all__ = ["DataParallel", "Group", "World", "current", "init", "shard", "shutdown", "train"]
