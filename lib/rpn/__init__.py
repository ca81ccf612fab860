"""Region proposal network utilities: anchors, ``rpn_inv_normalize`` and the Proposal op."""
from .anchors import generate_anchors, shifted_anchors
from .proposal import proposal, rpn_inv_normalize

__all__ = ["generate_anchors", "shifted_anchors", "proposal", "rpn_inv_normalize"]
