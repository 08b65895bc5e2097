"""Trains a new Decoder or task head on a representation restored from another run.

    python -m trainer.train_decoder             # a new renderer on the default train_gqn run
    python -m trainer.train_decoder --head localization --init_from runs/gqn_sm5
    python -m trainer.train_decoder --head properties --fine_tune

The restored Encoder (and layer-2 network) is frozen unless --fine_tune is
given. With no --init_from it uses the default train_gqn run of the dataset
and preset, training it first if it is missing. Rerunning with the same
--model_dir resumes.
"""

import os

from absl import flags, logging

from tiered_gqn import cli
from trainer import common, init_from, runner

FLAGS = flags.FLAGS
runner.define_flags("runs/decoder_<head>_<dataset>_<preset>")
init_from.define_flags(
    "The run to take the representation from: a run directory, a checkpoint prefix "
    "(.../checkpoints/ckpt-N) or a .keras file (default: the default trainer.train_gqn run of "
    "--dataset and --preset, trained first if missing).")
flags.DEFINE_enum("head", "decoder", ["decoder", "localization", "properties"],
                  "What to train: a new renderer (decoder) or a task head.")
flags.DEFINE_enum("reads", "r1", ["r1", "r2", "none"],
                  "What the new head reads: r1, r2 (the restored run's layer-2 network), or none "
                  "(the localization baseline that sees the query image alone).")

# Fields that belong to the restored representation, not to the new head.
ENCODER_FIELDS = ("encoder", "aggregator", "r_dim", "image_size", "pose_dim", "layer2_dim",
                  "layer2_query")


def default_model_dir(dataset, preset):
    return os.path.join("runs", f"decoder_{FLAGS.head}_{dataset}_{preset}")


def source_path():
    """--init_from, or the default train_gqn run (trained first if missing)."""
    if FLAGS.init_from:
        return FLAGS.init_from
    path = common.gqn_run_dir(FLAGS.dataset, FLAGS.preset)
    init_from.ensure_default_run(path, FLAGS.dataset, FLAGS.preset, FLAGS.data_dir)
    return path


def base_config():
    """The source run's config: the new head inherits its preset and schedules."""
    run = init_from.source_run(source_path())
    return None if run is None else run["config"]


def build(config, dataset):
    from tiered_gqn.models import GQN, Decoder, Tiered
    from tiered_gqn.models.tiered import new_head

    model, where, run = init_from.restore(source_path())
    if run is not None:
        init_from.check_same(config, run["config"], ENCODER_FIELDS, where)
    encoder, layer2 = model.representation, model.layer2
    if FLAGS.reads == "r2" and layer2 is None:
        cli.fail(f"--reads r2: the run restored from {where} has no layer-2 network.")
    init_from.freeze([encoder, layer2], FLAGS.fine_tune)
    reads = "r1" if FLAGS.reads == "none" else FLAGS.reads
    r_shape = layer2.r2_shape if reads == "r2" else encoder.r_shape(config.image_size)
    inputs = {FLAGS.head: "r2"} if reads == "r2" else {}
    sources = {"representation": where}
    if layer2 is not None:
        sources["layer2"] = where
    try:
        if FLAGS.head == "decoder":
            decoder = Decoder.from_preset(config, r_shape, name="decoder")
            new = GQN(encoder=encoder, decoder=decoder, layer2=layer2, head_inputs=inputs,
                      dtype=config.for_machine().dtype_policy)
        else:
            head = new_head(FLAGS.head, r_shape, config.image_size, dataset,
                            config.for_machine().dtype_policy)
            if FLAGS.reads == "none":
                head = type(head).from_config({**head.get_config(), "use_r": False})
            new = Tiered(encoder, heads=[head], layer2=layer2, head_inputs=inputs)
    except (ValueError, TypeError) as error:
        cli.fail(f"--head {FLAGS.head}: {error}")
    return runner.Built(new, sources, run={"init_from": where, "fine_tune": FLAGS.fine_tune,
                                           "head": FLAGS.head, "reads": FLAGS.reads})


JOB = runner.Job(command="train_decoder", default_model_dir=default_model_dir, build=build,
                 base_config=base_config)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if FLAGS.reads == "none" and FLAGS.head != "localization":
        cli.fail(f"--reads none: only the localization head has an image-only baseline, not "
                 f"--head {FLAGS.head}.")
    runner.run(JOB)


if __name__ == "__main__":
    cli.run(main)
