"""Neural building blocks: encoder/decoder interfaces and default architectures picked from shapes."""

from core.nn.base import (
    BaseDecoder,
    BaseEncoder,
    DecoderOutput,
    EncoderOutput,
    as_gaussian,
    as_reconstruction,
)
from core.nn.default_architectures import (
    ConvDecoder,
    ConvEncoder,
    MLPDecoder,
    MLPEncoder,
    default_decoder,
    default_encoder,
    mlp,
)

__all__ = [
    "BaseDecoder",
    "BaseEncoder",
    "ConvDecoder",
    "ConvEncoder",
    "DecoderOutput",
    "EncoderOutput",
    "MLPDecoder",
    "MLPEncoder",
    "as_gaussian",
    "as_reconstruction",
    "default_decoder",
    "default_encoder",
    "mlp",
]
