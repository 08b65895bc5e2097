"""GQN models: encoders, ConvDRAW decoder, the GQN, and hyper-parameter presets."""

from tiered_gqn.models.draw import ConvDRAW, ConvLSTMCell
from tiered_gqn.models.encoders import (
    ENCODERS,
    Pool,
    Pyramid,
    Representation,
    SumAggregator,
    Tower,
    get_encoder,
)
from tiered_gqn.models.gqn import GQN
from tiered_gqn.models.presets import PRESETS, GQNConfig, get_preset
