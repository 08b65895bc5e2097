"""Trains a GQN (representation network and ConvDRAW decoder) jointly, with any task heads.

    python -m trainer.train_gqn                      # small preset, embedded data
    python -m trainer.train_gqn --data_dir gs://gqn-dataset \
        --dataset shepard_metzler_5_parts --preset paper --model_dir runs/sm5
    python -m trainer.train_gqn --heads localization,properties   # heads on the same r

Rerunning with the same --model_dir resumes from its last checkpoint.
"""

from absl import flags, logging

from tiered_gqn import cli
from trainer import common, runner

FLAGS = flags.FLAGS
runner.define_flags("runs/gqn_<dataset>_<preset>")


def build(config, dataset):
    """A new GQN of `config`, with the task heads and layer-2 network it names."""
    from tiered_gqn.models import GQN

    return runner.Built(GQN.from_preset(config, dataset=dataset), sources={})


JOB = runner.Job(command="train_gqn", default_model_dir=common.gqn_run_dir, build=build,
                 from_saved_model=False)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    runner.run(JOB)


if __name__ == "__main__":
    cli.run(main)
