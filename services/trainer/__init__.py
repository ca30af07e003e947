"""Trainer: examples and preference pairs in, validated ONNX models out."""
