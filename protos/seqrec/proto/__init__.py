"""seqrec's public protobuf / gRPC API (generated code: run `python protos/generate.py`)."""
