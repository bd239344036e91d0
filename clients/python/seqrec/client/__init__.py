"""seqrec's Python client: typed calls to the gateway's gRPC front door and to the ranker.

    from seqrec.client import GatewayClient, Tls, filters

    with GatewayClient("dns:///gateway.seqrec.svc.cluster.local:50050", api_key="...",
                       tls=Tls.from_files(ca="ca.pem")) as client:
        answer = client.user_to_item("u42", top_k=10, filters=[filters.equals("genre", "Drama")])

The messages are those of `seqrec.proto.v1`, generated from the repository's protos/ (typed: .pyi stubs).
"""

from seqrec.client import filters
from seqrec.client.channel import Tls, open_channel
from seqrec.client.clients import DEFAULT_TIMEOUT_S, GatewayClient, RankerClient, interaction
from seqrec.client.errors import SeqrecError

__all__ = ["DEFAULT_TIMEOUT_S", "GatewayClient", "RankerClient", "SeqrecError", "Tls", "filters", "interaction",
           "open_channel"]
