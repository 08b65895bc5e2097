"""Renders a trained GQN's predictions for test scenes: a PNG grid and an orbit GIF.

    python -m trainer.render --model_dir runs/sm5 --out renders/sm5

predictions.png: one row per scene, its context views | the true query view
and prior samples. orbit.gif: one row per scene, its context views | the view
generated at a camera moving through 2 pi of yaw from the query's (around the
scene for cameras that face it, in place for mazes), with the same latent
noise at every frame so the orbit is coherent; a strip below marks the
progress round the orbit.

    python -m trainer.render --model_dir runs/gen_mazes --fly_through [--compose_size 3]

--fly_through (mazes runs): flythrough.gif and flythrough/frame_NNNN.png, a
flight through a k x k composition turning 360 degrees at one open block per
tile, each generated view beside a top-down map of the walls, the GEN node
grid (the nodes read at the camera in red) and the camera (see
tiered_gqn/flythrough.py).
"""

import os

import numpy as np
from absl import flags, logging

from tiered_gqn import cli
from trainer import common

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Run directory written by trainer.train_gqn (required).")
flags.DEFINE_string("out", None, "Output folder (default: <model_dir>/render).")
flags.DEFINE_integer("scenes", 4, "Test scenes to render.")
flags.DEFINE_integer("samples", 3, "Prior samples per scene in the PNG.")
flags.DEFINE_integer("orbit_frames", 36, "Frames of the orbit GIF (0 to skip it).")
flags.DEFINE_integer("context_size", None, "Context views per scene (default: the run's context_size).")
flags.DEFINE_enum("orbit", "auto", ["auto", "origin", "in_place"],
                  "Camera path: around the scene's vertical axis facing it (origin), turning in "
                  "place (in_place), or auto: in_place for mazes, else origin.")
flags.DEFINE_enum("split", "test", ["train", "test"], "Split to take scenes from.")
flags.DEFINE_integer("seed", 0, "Seed of the scene and view selection and of the latent samples.")
flags.DEFINE_string("data_dir", None, "Data root (default: the run's data_dir).")
flags.DEFINE_float("seconds_per_frame", 0.1, "Orbit GIF frame duration.")
flags.DEFINE_bool("fly_through", False,
                  "Mazes runs: instead of the grid and orbit, fly through a --compose_size "
                  "composition (tiered_gqn/flythrough.py): flythrough.gif and flythrough/*.png, "
                  "generated views beside a map of the mazes, the GEN nodes (red: read at the "
                  "camera) and the camera.")
flags.DEFINE_integer("compose_size", 3, "Mazes per side of the fly-through's composition.",
                     lower_bound=1, upper_bound=5)
flags.DEFINE_integer("frames_per_turn", 12, "Fly-through frames of each 360-degree turn.",
                     lower_bound=1)
common.define_skip_corrupt_flag()

PROGRESS_HEIGHT = 4  # pixels of the orbit progress strip under each GIF frame


def with_progress(image, frame, num_frames):
    """uint8 `image` [H, W, 3] above a strip whose black mark shows how far the orbit has gone.

    Marks differ for up to W - 6 frames, so GIF encoders keep every frame.
    """
    width = image.shape[1]
    strip = np.full((PROGRESS_HEIGHT, width, 3), 255, np.uint8)
    strip[1:3, 2:width - 2] = 200
    left = 2 + (frame * (width - 6)) // num_frames
    strip[:, left:left + 2] = 0
    return np.concatenate([image, strip], axis=0)


def main(argv):
    del argv
    common.check_run_dir(FLAGS.model_dir)
    for name, least in (("scenes", 1), ("samples", 0), ("orbit_frames", 0)):
        if FLAGS[name].value < least:
            cli.fail(f"--{name} must be at least {least}.")
    import tensorflow as tf

    logging.set_verbosity(logging.WARNING)

    from tiered_gqn import orbits, viz
    from tiered_gqn.data import datasets, reader
    from tiered_gqn.training import checkpoints, evaluation

    model_dir = FLAGS.model_dir
    out = FLAGS.out or os.path.join(model_dir, "render")
    if "://" not in out and os.path.exists(out) and not os.path.isdir(out):
        cli.fail(f"--out {out} is a file; expected an output folder.")
    model, run, _ = checkpoints.restore_model(model_dir)
    common.check_renders(model, model_dir)
    if FLAGS.fly_through:
        from tiered_gqn import flythrough

        print(flythrough.from_run(model, run, model_dir, out, FLAGS.compose_size,
                                  FLAGS.frames_per_turn, FLAGS.context_size, FLAGS.split,
                                  FLAGS.seed, FLAGS.data_dir, FLAGS.seconds_per_frame))
        return
    try:
        config = run["config"]
        data_dir = FLAGS.data_dir or run["data_dir"]
        context_size = FLAGS.context_size or config.context_size
        data = reader.load(
            run["dataset"], data_dir, FLAGS.split, batch_size=FLAGS.scenes, context_size=context_size,
            random_context_size=False, seed=FLAGS.seed, image_size=config.image_size,
            repeat=False, drop_remainder=False, skip_corrupt=FLAGS.skip_corrupt,
        )
        batch = next(iter(data), None)
    except tf.errors.OpError as e:
        files = reader.find_shards(data_dir, run["dataset"], FLAGS.split)
        raise reader.explain_data_error(e, files, datasets.get_info(run["dataset"]),
                                         skip_corrupt=FLAGS.skip_corrupt) from None
    if batch is None:
        cli.fail(f"no scenes in the {FLAGS.split} split of {data_dir}.")
    (frames, cameras, query), target = batch
    scenes = int(frames.shape[0])

    samples = [model.generate(frames, cameras, query, seed=FLAGS.seed + 1 + i)
               for i in range(FLAGS.samples)]
    grid_path = os.path.join(out, "predictions.png")
    viz.save_png(grid_path, viz.scene_grid(frames, [target] + samples, max_rows=scenes))
    written = [f"{grid_path} ({scenes} scenes; each row: {context_size} context views | "
               f"true query view, {FLAGS.samples} prior samples)"]

    if FLAGS.orbit_frames:
        kind = orbits.orbit_kind(run["dataset"]) if FLAGS.orbit == "auto" else FLAGS.orbit
        path = orbits.orbit(np.asarray(query), FLAGS.orbit_frames, kind)
        views = orbits.generate_orbit(model, frames, cameras, path, seed=FLAGS.seed + 1)
        gif = np.stack([with_progress(viz.scene_grid(frames, [view], max_rows=scenes), f, len(views))
                        for f, view in enumerate(views)])
        gif_path = os.path.join(out, "orbit.gif")
        viz.save_gif(gif_path, gif, seconds_per_frame=FLAGS.seconds_per_frame)
        written.append(f"{gif_path} ({FLAGS.orbit_frames} frames, {kind} orbit; each row: context "
                       "views | generated view; frame 0 is the query camera with the first "
                       "sample's latents)")
    print(f"Rendered {run['dataset']} {FLAGS.split} scenes with {model_dir}:\n  " + "\n  ".join(written))


if __name__ == "__main__":
    cli.run(main)
