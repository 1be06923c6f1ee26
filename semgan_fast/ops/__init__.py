"""Public ops. Each takes ``backend=`` ("auto" picks the fastest available; "reference" is the
papers' naive formulation, kept next to the op for tests and benchmarks)."""
from .class_conv import class_conv, class_conv_reference
from .class_l1 import class_l1, class_l1_reference
from .class_pool import class_pool, class_pool_reference
from .class_stack import class_stack, class_stack_reference
from .class_memory_bank import ClassMemoryBank
from .onehot_conv import onehot_conv, onehot_conv_reference
from .pair_similarity_loss import pair_similarity_loss, pair_similarity_loss_reference
from .pixel_contrast_loss import pixel_contrast_loss, pixel_contrast_loss_reference
from .sample_anchors import AnchorSample, sample_anchors, sample_anchors_reference
from .weight_map_fusion import weight_map_fusion

__all__ = [
    "class_conv", "class_conv_reference",
    "class_pool", "class_pool_reference",
    "class_l1", "class_l1_reference",
    "class_stack", "class_stack_reference",
    "onehot_conv", "onehot_conv_reference",
    "sample_anchors", "sample_anchors_reference", "AnchorSample", "ClassMemoryBank",
    "pixel_contrast_loss", "pixel_contrast_loss_reference",
    "pair_similarity_loss", "pair_similarity_loss_reference",
    "weight_map_fusion",
]
