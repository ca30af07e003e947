"""The inference service: Rank (onnxruntime) and Rewrite (rule table) over gRPC."""
