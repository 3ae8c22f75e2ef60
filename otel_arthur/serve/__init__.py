"""``otel-arthur serve``: an OTLP/HTTP and OTLP/gRPC traces receiver beside an OpenTelemetry Collector.

::

    Collector ─otlphttp─▶ POST /v1/traces ─────┬─▶ Receiver.handle ─▶ Pipeline.accept ─▶ spool ─▶ worker ─▶ Arthur
    Collector ─otlp─────▶ TraceService/Export ─┘   (receiver.py)      (the exporter's own pipeline and sender)

One module per concern:

    receiver.py  the pure core: ``Receiver.handle(body, headers) -> Reply`` (status, headers, body); every
                 answer the OTLP/HTTP contract asks for is decided here, with no HTTP framework in sight
    metrics.py   ``PipelineStats`` and the receiver's counters as Prometheus metric families
    grpc_receiver.py  OTLP/gRPC on grpcio: the message and metadata to ``Receiver.handle``, its answer as a gRPC status
    app.py       the thin HTTP layer (Starlette under uvicorn), lifespan, signals, the run loop
    connections.py  read deadlines and a connection cap on uvicorn's h11 protocol
    cli.py       flags, each with its environment variable and default

Kept free of imports here, so ``otel-arthur --help`` never loads the server stack.
"""
