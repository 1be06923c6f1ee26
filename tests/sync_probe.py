"""Test helper: records the aten ops a block of code dispatches, to assert the absence of host synchronisation."""
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that read device data on the host (.item(), data-dependent output shapes).
SYNC_OPS = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive", "masked_select",
            "repeat_interleave", "bincount", "histc"}


class OpRecorder(TorchDispatchMode):
    """``with OpRecorder() as rec: ...`` then ``rec.ops``: the names of the aten ops dispatched."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))
