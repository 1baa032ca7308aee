"""The HTTP engine, in layers: a module imports only from the layers below its own.

1. `sides.py`: the base classes the parts talk through (`ClientSide`, `UpstreamSide`,
   `EndpointSide`, `ExchangeSide`), and the protocol-neutral leaves: `fields.py`, `head.py`,
   `request.py`, `requestid.py`, `framing.py`, `response.py`, `capture.py`. None imports
   anything above.
2. `upstream.py`: the HTTP/1.1 connection to an upstream. It drives its exchange and tells its
   endpoint through the bases of `sides.py`; it knows neither the pool nor the exchange.
3. `pool.py`: endpoints (idle connections, passive health) and the pools that admit exchanges
   and make upstream connections (it imports `upstream.py`, never the exchange).
4. `proxy/dataplane.py`: routing, the `Route` of a request and its recorder; it owns the pools
   and reads the client through `ClientSide`.
5. `relay.py` and `exchange.py`: one request, its route and its outcome. The exchange reaches its
   client, its upstream connection and their endpoint only through `sides.py`: it imports no
   connection module (`connection.py`, `downstream.py`, `upstream.py`) and not the server.
6. `connection.py` and `downstream.py`: the HTTP/1.1 client connection (`ClientSide`), which
   makes exchanges and sees the listener that accepted it as `connection.Listener`.
7. `server.py`: the listener (`Engine`, a `Listener`), on top.

`tests/test_imports.py` fails on any import cycle in `proxy/` (type-only and function-level
imports count) and checks these layers.
"""
