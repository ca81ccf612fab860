"""Region proposal network utilities: anchors, ``rpn_inv_normalize`` and the Proposal op."""
from dff.models.rpn.anchors import generate_anchors, shifted_anchors
from dff.models.rpn.proposal import proposal, rpn_inv_normalize

__all__ = ["generate_anchors", "shifted_anchors", "proposal", "rpn_inv_normalize"]
