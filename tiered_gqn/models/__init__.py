"""GQN models: the Encoder (representation network), the Decoder (ConvDRAW renderer),
task heads and the layer-2 network, the GQN that composes them, and hyper-parameter presets."""

from tiered_gqn.models.decoder import Decoder
from tiered_gqn.models.draw import ConvDRAW, ConvLSTMCell
from tiered_gqn.models.encoders import (
    AGGREGATORS,
    ENCODERS,
    Encoder,
    MeanAggregator,
    Pool,
    Pyramid,
    Representation,
    SumAggregator,
    Tower,
    get_aggregator,
    get_encoder,
)
from tiered_gqn.models.gqn import GQN
from tiered_gqn.models.presets import PRESETS, GQNConfig, get_preset
from tiered_gqn.models.tiered import Layer2, Tiered
from tiered_gqn.models import gen, retrieval  # noqa: F401  (registers GEN memory and the retrieval head)
