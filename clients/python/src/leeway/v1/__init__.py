"""Generated gRPC stubs for leeway.v1 (make proto). Do not edit."""
