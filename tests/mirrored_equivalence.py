"""Run in a fresh process (logical CPU devices must be set before TF starts).

Trains the tiny config 3 steps on one device and under MirroredStrategy over 2 logical
CPUs, from the same initial weights and the same global batches; prints both as JSON.
"""

import json
import sys

from launch import strategy as strategy_lib

strategy_lib.set_cpu_devices(2)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from configs import tiny  # noqa: E402
from launch import trainer  # noqa: E402
from pipeline import dataset  # noqa: E402


def run(name: str, data_dir: str) -> dict:
    config = tiny.get_config()
    # Static buckets: batch sizes then do not depend on the replica count (the finer
    # dynamic buckets round them to a multiple of it), so both runs see the same batches.
    config.data.static_shapes = True
    keras.utils.set_random_seed(0)
    strategy = (tf.distribute.OneDeviceStrategy("/cpu:0") if name == "one_device"
                else strategy_lib.create("mirrored"))
    config = trainer.resolve_config(config, dataset.load_metadata(data_dir), strategy=strategy)
    run_trainer = trainer.Trainer(config, data_dir=data_dir, strategy=strategy,
                                  worker_index=0, num_workers=1)
    stats = run_trainer.run_loop(3)
    return {"replicas": strategy.num_replicas_in_sync,
            "losses": [s.loss_sum / s.target_tokens for s in stats],
            "tokens": [s.target_tokens for s in stats],
            "weights": [v.numpy().ravel().tolist()
                        for v in run_trainer.model.trainable_variables]}


if __name__ == "__main__":
    print(json.dumps({name: run(name, sys.argv[1]) for name in ("one_device", "mirrored")}))
