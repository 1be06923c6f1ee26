"""Public ops. Each takes ``backend=`` ("auto" picks the fastest available; "reference" is the
papers' naive formulation, kept next to the op for tests and benchmarks)."""
from .class_conv import class_conv, class_conv_reference
from .class_l1 import class_l1, class_l1_reference
from .class_pool import class_pool, class_pool_reference
from .onehot_conv import onehot_conv, onehot_conv_reference
from .weight_map_fusion import weight_map_fusion

__all__ = [
    "class_conv", "class_conv_reference",
    "class_pool", "class_pool_reference",
    "class_l1", "class_l1_reference",
    "onehot_conv", "onehot_conv_reference",
    "weight_map_fusion",
]
