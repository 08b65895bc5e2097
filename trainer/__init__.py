"""Command-line entry points: train_gqn, evaluate, render."""

import os

# Keep TensorFlow's C++ start-up chatter out of the trainers' output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
