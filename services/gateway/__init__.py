"""The gateway: the JSON/HTTP and gRPC front door that routes each query to the ranker's typed RPC."""
