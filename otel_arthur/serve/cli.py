"""``otel-arthur serve``: flags, each falling back to its environment variable, then its default.

The destinations resolve exactly as ``ArthurSpanExporter``'s do (``ArthurSettings.resolve``,
``EngineSettings.resolve``), so a deployment can move from the in-app exporter to ``serve`` with the
same ``ARTHUR_*`` environment: v3 when its URL is set, Arthur Engine when its URL is, or both.
Flags left unset stay ``None`` here, which is what lets the environment decide.
"""

from __future__ import annotations

import argparse

from otel_arthur import config as c
from otel_arthur import exit_codes

EPILOG = f"""\
Point an OpenTelemetry Collector's otlphttp exporter at http://HOST:PORT (it appends /v1/traces), or its
otlp (gRPC) or loadbalancing exporter at HOST:GRPC_PORT; see collector-config/. Endpoints: POST /v1/traces,
OTLP/gRPC TraceService/Export, GET /healthz, /readyz, /metrics. ARTHUR_ATTRIBUTE_MAP and
the privacy settings (ARTHUR_SEND_CONTENT, ARTHUR_REDACT, ARTHUR_REDACT_PATTERNS) are read from the
environment, as by the exporter. Secrets are better set through their environment variables than flags,
which other users can see in the process list.

examples:
  ARTHUR_ENDPOINT_URL=https://app.arthur.ai ARTHUR_API_KEY=… ARTHUR_MODEL_ID=my-chatbot otel-arthur serve
  ARTHUR_ENGINE_URL=https://engine.example ARTHUR_ENGINE_API_KEY=… ARTHUR_TASK_ID=… otel-arthur serve
  otel-arthur serve --host 0.0.0.0 --port 4319 --grpc-port 4320 --decode-processes 2 \
      --tls-cert-file server.pem --tls-key-file server-key.pem
  OTEL_ARTHUR_RECEIVER_TOKEN=… otel-arthur serve --url http://127.0.0.1:8787 --allow-insecure --model-id chat

{exit_codes.epilog_table((exit_codes.OK, exit_codes.ERROR, exit_codes.USAGE, exit_codes.CONFIGURATION))}
"""


def _help(text: str, env: str, default: object) -> str:
    return f"{text} (env {env}; default: {default})"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    receiver = parser.add_argument_group("receiver")
    receiver.add_argument("--host", help=_help("interface to listen on; 0.0.0.0 for every interface",
                                               c.OTEL_ARTHUR_RECEIVER_HOST, c.DEFAULT_RECEIVER_HOST))
    receiver.add_argument("--port", type=int, help=_help("port to listen on; 0 picks a free one (logged)",
                                                         c.OTEL_ARTHUR_RECEIVER_PORT, c.DEFAULT_RECEIVER_PORT))
    receiver.add_argument("--grpc-port", type=int, help=_help(
        "port of the OTLP/gRPC receiver, on the same host; 0 picks a free one (logged)",
        c.OTEL_ARTHUR_RECEIVER_GRPC_PORT, c.DEFAULT_RECEIVER_GRPC_PORT))
    receiver.add_argument("--tls-cert-file", help=_help(
        "PEM certificate (chain) of both receivers, with --tls-key-file: they then speak only TLS",
        c.OTEL_ARTHUR_RECEIVER_TLS_CERT_FILE, "none, plain text"))
    receiver.add_argument("--tls-key-file", help=_help("PEM private key of --tls-cert-file",
                                                       c.OTEL_ARTHUR_RECEIVER_TLS_KEY_FILE, "none"))
    receiver.add_argument("--tls-client-ca-file", help=_help(
        "PEM CA certificates: clients must present a certificate they signed (mutual TLS)",
        c.OTEL_ARTHUR_RECEIVER_TLS_CLIENT_CA_FILE, "none, no client certificate asked for"))
    receiver.add_argument("--max-body-bytes", type=int, help=_help(
        "largest request body (gRPC: message), as sent and once decompressed; larger is answered 413 "
        "(gRPC: RESOURCE_EXHAUSTED)",
        c.OTEL_ARTHUR_RECEIVER_MAX_BODY_BYTES, f"{c.DEFAULT_MAX_BODY_BYTES} (20 MiB)"))
    receiver.add_argument("--auth-token", help=_help(
        "require 'Authorization: Bearer TOKEN' on POST /v1/traces (gRPC: authorization metadata), else 401 "
        "(gRPC: UNAUTHENTICATED)",
        c.OTEL_ARTHUR_RECEIVER_TOKEN, "none, no authentication"))
    receiver.add_argument("--allow-plaintext-token", action="store_true", default=None, help=_help(
        "start with --auth-token, no TLS and a --host beyond loopback (refused otherwise: the token would "
        "travel in clear); only when a proxy or service mesh in front ends TLS",
        c.OTEL_ARTHUR_RECEIVER_ALLOW_PLAINTEXT_TOKEN, "false"))
    receiver.add_argument("--shutdown-timeout", type=float, help=_help(
        "seconds from SIGTERM to exit: requests in flight finish, then delivery; the rest stays spooled",
        c.OTEL_ARTHUR_RECEIVER_SHUTDOWN_TIMEOUT, c.DEFAULT_RECEIVER_SHUTDOWN_TIMEOUT))
    receiver.add_argument("--decode-processes", type=int, help=_help(
        "processes that decode and map request bodies, to use more than one core (e.g. the number of cores); "
        "0 decodes in the serving process", c.OTEL_ARTHUR_RECEIVER_DECODE_PROCESSES, 0))
    receiver.add_argument("--max-spans-per-request", type=int, help=_help(
        "most spans (and resource or scope groups) in one request, counted before it is decoded; more is "
        "answered 413", c.OTEL_ARTHUR_RECEIVER_MAX_SPANS_PER_REQUEST, c.DEFAULT_MAX_SPANS_PER_REQUEST))
    receiver.add_argument("--header-timeout", type=float, help=_help(
        "seconds for a request's headers to arrive, from the connection (or the request's first byte); "
        "a connection still waiting is closed", c.OTEL_ARTHUR_RECEIVER_HEADER_TIMEOUT, c.DEFAULT_HEADER_TIMEOUT))
    receiver.add_argument("--body-timeout", type=float, help=_help(
        "seconds for a request's body to arrive after its headers; a connection still sending is closed",
        c.OTEL_ARTHUR_RECEIVER_BODY_TIMEOUT, c.DEFAULT_BODY_TIMEOUT))
    receiver.add_argument("--max-connections", type=int, help=_help(
        "connections open at once; one more is closed as soon as it is accepted (lowered to what the "
        "file-descriptor limit allows)", c.OTEL_ARTHUR_RECEIVER_MAX_CONNECTIONS, c.DEFAULT_MAX_CONNECTIONS))

    arthur = parser.add_argument_group("Arthur v3 inference API (as the exporter: the same ARTHUR_* variables)")
    arthur.add_argument("--url", help=_help("Arthur base URL, e.g. https://app.arthur.ai; turns v3 delivery on",
                                            c.ARTHUR_ENDPOINT_URL, "none"))
    arthur.add_argument("--model-id", help=_help("id of the Arthur model that receives the records",
                                                 c.ARTHUR_MODEL_ID, "none, required with --url"))
    arthur.add_argument("--api-key", help=_help("API key; wins over a login", c.ARTHUR_API_KEY, "none"))
    arthur.add_argument("--login", help=_help("login, used when there is no API key", c.ARTHUR_LOGIN, "none"))
    arthur.add_argument("--password", help=_help("password for the login; never prompted for",
                                                 c.ARTHUR_PASSWORD, "none"))
    arthur.add_argument("--organization-id", help=_help("organization of the model", c.ARTHUR_ORGANIZATION_ID,
                                                        "the credentials' own"))
    arthur.add_argument("--allow-insecure", action="store_true", default=None,
                        help=_help("permit a plain http:// Arthur URL", c.ARTHUR_ALLOW_INSECURE, "false"))
    arthur.add_argument("--verify-ssl", action=argparse.BooleanOptionalAction, default=None,
                        help=_help("check Arthur's TLS certificate", c.VERIFY_SSL, "true"))
    arthur.add_argument("--timeout", type=float, help=_help("seconds per HTTP request to Arthur",
                                                            c.ARTHUR_TIMEOUT, c.DEFAULT_TIMEOUT))
    arthur.add_argument("--batch-max-records", type=int, help=_help(
        "records per inferences request", c.ARTHUR_BATCH_MAX_RECORDS, c.DEFAULT_BATCH_MAX_RECORDS))
    arthur.add_argument("--batch-max-bytes", type=int, help=_help(
        "JSON bytes per inferences request", c.ARTHUR_BATCH_MAX_BYTES, c.DEFAULT_BATCH_MAX_BYTES))
    arthur.add_argument("--spool-dir", help=_help("directory of the durable spool", c.ARTHUR_SPOOL_DIR,
                                                  f"${c.XDG_STATE_HOME}/{c.SPOOL_SUBDIRECTORY}, "
                                                  f"else ~/.local/state/{c.SPOOL_SUBDIRECTORY}"))
    arthur.add_argument("--spool-max-bytes", type=int, help=_help(
        "bound of the spool on disk; when full, new requests are answered 503 + Retry-After",
        c.ARTHUR_SPOOL_MAX_BYTES, f"{c.DEFAULT_SPOOL_MAX_BYTES} (512 MiB)"))
    arthur.add_argument("--max-text-bytes", type=int, help=_help(
        "UTF-8 bytes kept of each prompt or completion", c.ARTHUR_MAX_TEXT_BYTES, c.DEFAULT_MAX_TEXT_BYTES))

    engine = parser.add_argument_group("Arthur Engine (spool, timeout, TLS and privacy settings as above)")
    engine.add_argument("--engine-url", help=_help(
        "Arthur Engine base URL (traces go to URL/api/v1/traces); turns Engine delivery on", c.ARTHUR_ENGINE_URL,
        f"none; {c.ARTHUR_BASE_URL} when no v3 URL is set"))
    engine.add_argument("--engine-api-key", help=_help("Engine API key, sent as a Bearer token",
                                                       c.ARTHUR_ENGINE_API_KEY,
                                                       f"none; {c.ARTHUR_API_KEY} when no v3 URL is set"))
    engine.add_argument("--task-id", help=_help("Engine task every trace goes to (resource arthur.task)",
                                                c.ARTHUR_TASK_ID, "none: the Engine routes by service.name"))
    engine.add_argument("--engine-spans", choices=(c.ENGINE_SPANS_AI, c.ENGINE_SPANS_ALL), help=_help(
        "ai: the spans a supported convention marks as AI work; all: every span", c.ARTHUR_ENGINE_SPANS,
        c.ENGINE_SPANS_AI))


def run(args: argparse.Namespace) -> int:
    from otel_arthur.serve.app import serve  # the server stack, only once serving

    # A ConfigurationError is one line and exit 3 (otel_arthur.cli).
    common = {"allow_insecure": args.allow_insecure, "verify_ssl": args.verify_ssl, "timeout": args.timeout,
              "spool_dir": args.spool_dir, "spool_max_bytes": args.spool_max_bytes,
              "max_text_bytes": args.max_text_bytes}
    destinations: list[c.ArthurSettings | c.EngineSettings] = []
    wants_engine = c.engine_configured(args.engine_url, v3_url=args.url)
    if c.v3_configured(args.url) or not wants_engine:  # with neither, v3's error names what is missing
        try:
            destinations.append(c.ArthurSettings.resolve(
                url=args.url, api_key=args.api_key, login=args.login, password=args.password,
                organization_id=args.organization_id, model_id=args.model_id,
                batch_max_records=args.batch_max_records, batch_max_bytes=args.batch_max_bytes, **common))
        except c.ConfigurationError as exc:
            raise c.ConfigurationError(str(exc) if wants_engine else
                                       f"{exc} (for Arthur Engine: pass engine_url= or set {c.ARTHUR_ENGINE_URL})"
                                       ) from None
    if wants_engine:
        destinations.append(c.EngineSettings.resolve(
            engine_url=args.engine_url, engine_api_key=args.engine_api_key, task_id=args.task_id,
            engine_spans=args.engine_spans, v3_url=args.url, **common))
    receiver = c.ReceiverSettings.resolve(
        host=args.host, port=args.port, max_body_bytes=args.max_body_bytes, auth_token=args.auth_token,
        shutdown_timeout=args.shutdown_timeout, decode_processes=args.decode_processes,
        max_spans_per_request=args.max_spans_per_request, header_timeout=args.header_timeout,
        body_timeout=args.body_timeout, max_connections=args.max_connections, grpc_port=args.grpc_port,
        tls_cert_file=args.tls_cert_file, tls_key_file=args.tls_key_file, tls_client_ca_file=args.tls_client_ca_file,
        allow_plaintext_token=args.allow_plaintext_token,
    )
    return serve(destinations, receiver)
