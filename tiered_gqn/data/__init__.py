"""Datasets: the gqn-datasets table, tf.data reader, writer and procedural scenes."""

from tiered_gqn.data.datasets import DATASETS, DatasetInfo, get_info
from tiered_gqn.data.reader import load
