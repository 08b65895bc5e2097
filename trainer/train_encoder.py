"""Trains a new Encoder (or layer-2 network) against decoders and heads restored from another run.

    python -m trainer.train_encoder                       # an Encoder with the localization head alone
    python -m trainer.train_encoder --init_from runs/gqn_sm5 --encoder pyramid
    python -m trainer.train_encoder --init_from runs/tiered --part layer2

With --init_from, the restored renderer and heads are frozen and the new
Encoder must make r of the shape they read (another architecture with the
same r shape); with `--part layer2` the restored Encoder is frozen too and a
new layer-2 network is trained for the heads that read r2. Without
--init_from it trains a new Encoder with the heads of --heads (default
localization) alone. Rerunning with the same --model_dir resumes.
"""

import os

from absl import flags, logging

from tiered_gqn import cli
from trainer import init_from, runner

FLAGS = flags.FLAGS
runner.define_flags("runs/encoder_<part>_<dataset>_<preset>")
flags.DEFINE_string("init_from", None,
                    "The run whose renderer and heads the new part is trained against (frozen): a "
                    "run directory, a checkpoint prefix (.../checkpoints/ckpt-N) or a .keras file. "
                    "Default: none, a new Encoder with the --heads alone (localization if none).")
flags.DEFINE_enum("part", "encoder", ["encoder", "layer2"],
                  "What to train: a new Encoder, or a new layer-2 network over the restored Encoder.")

# The heads an Encoder trains with when no run is restored and --heads names none.
DEFAULT_HEADS = "localization"


def default_model_dir(dataset, preset):
    return os.path.join("runs", f"encoder_{FLAGS.part}_{dataset}_{preset}")


def base_config():
    """The restored run's config (the frozen parts' hyper-parameters), or the preset."""
    if not FLAGS.init_from:
        return None
    run = init_from.source_run(FLAGS.init_from)
    return None if run is None else run["config"]


def _alone(config, dataset):
    """A new Encoder with new heads (and layer 2) of the config, no renderer."""
    from tiered_gqn.models import Encoder, Tiered
    from tiered_gqn.models.tiered import tier_parts

    config = config.for_machine()
    if not config.head_names():
        config = config.replace(heads=DEFAULT_HEADS)
    encoder = Encoder(config.encoder, r_dim=config.r_dim, aggregator=config.aggregator,
                      image_size=config.image_size, pose_dim=config.pose_dim,
                      dtype=config.dtype_policy)
    parts = tier_parts(config, encoder, dataset, config.dtype_policy)
    return runner.Built(Tiered(encoder, **parts), sources={}, run={"part": "encoder"})


def build(config, dataset):
    from tiered_gqn.models import GQN, Encoder, Layer2

    if not FLAGS.init_from:
        if FLAGS.part == "layer2":
            cli.fail("--part layer2 needs --init_from: the Encoder the layer-2 network reads.")
        return _alone(config, dataset)
    model, where, _ = init_from.restore(FLAGS.init_from)
    config = config.for_machine()
    frozen = [part for name, part in model.parts() if name != "representation"]
    init_from.freeze(frozen, False)
    encoder, layer2 = model.representation, model.layer2
    sources = {name: where for name, _ in model.parts()}
    if FLAGS.part == "encoder":
        encoder = Encoder(config.encoder, r_dim=config.r_dim, aggregator=config.aggregator,
                          image_size=config.image_size, pose_dim=config.pose_dim,
                          dtype=config.dtype_policy)
        sources["representation"] = "new"
    else:
        if layer2 is None:
            cli.fail(f"--part layer2: the run restored from {where} has no layer-2 network "
                     "for the new one to replace; train one with --layer2_dim in train_gqn.")
        encoder.trainable = False
        layer2 = Layer2.from_config({**layer2.get_config(), "name": "layer2"})
        sources["layer2"] = "new"
    parts = {"heads": model.heads, "layer2": layer2, "head_inputs": model.head_inputs,
             "head_weights": model.head_weights}
    try:
        if hasattr(model, "decoder"):
            new = GQN(encoder=encoder, decoder=model.decoder, **parts)
        else:
            new = type(model)(encoder, **parts)
    except ValueError as error:
        cli.fail(f"--{'encoder/--r_dim' if FLAGS.part == 'encoder' else 'part layer2'}: {error}")
    return runner.Built(new, sources, run={"init_from": where, "part": FLAGS.part})


JOB = runner.Job(command="train_encoder", default_model_dir=default_model_dir, build=build,
                 base_config=base_config)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    runner.run(JOB)


if __name__ == "__main__":
    cli.run(main)
