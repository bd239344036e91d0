"""Version 1 of the seqrec gRPC API: the .proto files and their generated Python code."""
