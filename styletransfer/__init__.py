"""Real-time neural style transfer with swappable normalisation (BN, IN, BN+SE, IEBN)."""

from .errors import StyleTransferError
from .network import TransformerNet
from .norms import IEBN2d, convert_bn_to_iebn, make_norm

__all__ = ["IEBN2d", "StyleTransferError", "TransformerNet", "convert_bn_to_iebn", "make_norm"]
__version__ = "0.1.0"
