"""Generated protobuf and gRPC stubs for loopwise.v1 (make protos)."""
