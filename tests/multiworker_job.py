"""One process of a tiny GQN training job through `loop.Trainer`, for tests/test_multiworker.py.

    TF_CONFIG=... python tests/multiworker_job.py --data_dir D --model_dir M --out O \
        [--strategy multi_worker] [--cpu_devices 2] [--max_steps 4] [--step_seconds 0.5] [--by_file]

Trains the `tiny` preset (float32, direct convs) on D's shepard_metzler_5_parts
train split with a seeded stream (the same global batches in every process,
each worker keeping its share; with --by_file each worker reads its own
shard files), resuming from the chief's latest checkpoint
in M. Prints "start <step> <position>" after restoring and "done <step>" at
the end, and writes its trainable weights to O/weights_<task>.npz.
"""

import argparse
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--data_dir", required=True)
parser.add_argument("--model_dir", required=True)
parser.add_argument("--out", required=True)
parser.add_argument("--strategy", default="multi_worker")
parser.add_argument("--cpu_devices", type=int, default=None)
parser.add_argument("--max_steps", type=int, default=4)
parser.add_argument("--batch_size", type=int, default=4)
parser.add_argument("--checkpoint_every", type=int, default=2)
parser.add_argument("--step_seconds", type=float, default=0.0,
                    help="Sleep after each step (so that a test can kill the job mid-run).")
parser.add_argument("--jit_compile", action="store_true")
parser.add_argument("--by_file", action="store_true",
                    help="Each worker reads its own shard files (loop.FileShards), not a share of "
                         "every batch.")
parser.add_argument("--seed", type=int, default=7)
parser.add_argument("--same_noise", action="store_true",
                    help="Every replica draws the same noise (the old defect), to show a test can fail.")
args = parser.parse_args()

from tiered_gqn.training import distribute  # noqa: E402  (the strategy comes first)

strategy = distribute.make_strategy(args.strategy, cpu_devices=args.cpu_devices)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tiered_gqn import interrupts  # noqa: E402
from tiered_gqn.data import reader  # noqa: E402
from tiered_gqn.models import GQN, presets  # noqa: E402
from tiered_gqn.training import loop, optimizers  # noqa: E402

DATASET = "shepard_metzler_5_parts"
if args.same_noise:
    from tiered_gqn.models import draw

    def same_noise(self, shape, step, seed):
        seed = self.seed_generator if seed is None else (int(seed) * 1_000_003 + step) % (2**31)
        return keras.random.normal(shape, dtype="float32", seed=seed)

    draw.ConvDRAW._noise = same_noise
interrupts.install()
config = presets.get_preset("tiny", batch_size=args.batch_size, seed=args.seed,
                            conv_algorithm="direct", dtype_policy="float32").for_dataset(DATASET)


def data(start_step):
    def make(shard=None, batch_size=config.batch_size):
        return reader.load(DATASET, args.data_dir, "train", batch_size=batch_size,
                           context_size=config.context_size, random_context_size=True,
                           image_size=config.image_size, seed=config.seed, start_step=start_step,
                           shard=shard)
    return loop.FileShards(make) if args.by_file else make()


keras.utils.set_random_seed(config.seed)
with strategy.scope():
    model = GQN.from_preset(config)
    optimizer = optimizers.for_config(config)
    optimizer.build(model.trainable_variables)
trainer = loop.Trainer(model, optimizer, strategy, config.batch_size, args.model_dir,
                       jit_compile=args.jit_compile)
trainer.restore()
print("start", trainer.step, trainer.position, distribute.describe(strategy), trainer.task.name,
      flush=True)


def pause(step, metrics, rate):
    if args.step_seconds:
        time.sleep(args.step_seconds)
    print("step", step, f"{metrics['elbo']:.6f}", flush=True)


try:
    trainer.fit(data(trainer.position), args.max_steps, checkpoint_every=args.checkpoint_every,
                callbacks=[pause], verbose=False)
except interrupts.Interrupted as e:
    print("interrupted", trainer.step, flush=True)
    sys.exit(128 + e.signum)
os.makedirs(args.out, exist_ok=True)
np.savez(os.path.join(args.out, f"weights_{trainer.task.type}_{trainer.task.index}.npz"),
         *[v.numpy() for v in model.trainable_variables])
print("done", trainer.step, flush=True)
trainer.close()
