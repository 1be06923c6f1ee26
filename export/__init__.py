"""ONNX / TensorRT export (imported as ``semgan_fast.export``)."""
