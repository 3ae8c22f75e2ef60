"""``otel-arthur create-model``: onboard the Arthur model that otel-arthur's records land in.

A generative-text model (input NLP, output TOKEN_SEQUENCE) built with the ``arthurai`` SDK's
``build_token_sequence_model``: ``prompt`` (PIPELINE_INPUT) and ``completion`` (PREDICTED_VALUE), both
UNSTRUCTURED_TEXT, plus every other field of :data:`otel_arthur.fields.FIELDS` as NON_INPUT_DATA of
its listed value type. With a partner model id it is idempotent: an existing model is reused.

Importing ``arthurai`` costs about 5 s and 370 MB, so it happens only inside the functions that need
it; importing this module (as ``otel-arthur --help`` does) stays cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import quote

from otel_arthur.config import (
    ARTHUR_ALLOW_INSECURE,
    ARTHUR_API_KEY,
    ARTHUR_ENDPOINT_URL,
    ARTHUR_LOGIN,
    ARTHUR_ORGANIZATION_ID,
    ARTHUR_PASSWORD,
    ArthurConnection,
    ConfigurationError,
    as_flags,
    display_url,
)
from otel_arthur.fields import COMPLETION, FIELDS, PROMPT

if TYPE_CHECKING:
    from arthurai import ArthurAI

logger = logging.getLogger(__name__)

DEFAULT_DISPLAY_NAME = "otel-arthur LLM generations"


EPILOG = """\
Prints the new (or existing) model's id on stdout, and nothing else: use it as ARTHUR_MODEL_ID.

examples:
  ARTHUR_ENDPOINT_URL=https://app.arthur.ai ARTHUR_API_KEY=… otel-arthur create-model --partner-model-id my-chatbot
  export ARTHUR_MODEL_ID=$(otel-arthur create-model --partner-model-id my-chatbot)
  otel-arthur create-model --url http://127.0.0.1:8787 --allow-insecure --login admin --password … \\
      --display-name "Support bot"

exit codes:
  0  created, or found by its partner model id
  1  refused or unreachable (one line; the traceback with --debug)
  2  bad command line
  3  settings missing or invalid (no URL or credentials, plain http without --allow-insecure)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--url", help=f"Arthur base URL, e.g. https://app.arthur.ai (default: ${ARTHUR_ENDPOINT_URL})")
    parser.add_argument("--api-key", help=f"API key; wins over a login (default: ${ARTHUR_API_KEY})")
    parser.add_argument("--login", help=f"login, used when there is no API key (default: ${ARTHUR_LOGIN})")
    parser.add_argument("--password", help=f"password for the login; never prompted for (default: ${ARTHUR_PASSWORD})")
    parser.add_argument(
        "--organization-id",
        help=f"organization to create the model in (default: ${ARTHUR_ORGANIZATION_ID}, else the credentials' own)",
    )
    parser.add_argument(
        "--allow-insecure",
        action="store_true",
        default=None,
        help=f"permit a plain http:// URL (default: ${ARTHUR_ALLOW_INSECURE}=true permits it, else refused)",
    )
    parser.add_argument(
        "--partner-model-id",
        help="your id for the model; if a model with it exists, its id is printed and nothing is created "
        "(default: none, the SDK derives one from the display name and the time)",
    )
    parser.add_argument(
        "--display-name",
        help=f"name shown in Arthur (default: the partner model id, else {DEFAULT_DISPLAY_NAME!r})",
    )


def resolve_connection(args: argparse.Namespace) -> ArthurConnection:
    """Flags, else ``ARTHUR_*``, else defaults: the exporter's own rules (``otel_arthur.config``)."""
    try:
        return ArthurConnection.resolve(
            url=args.url, api_key=args.api_key, login=args.login, password=args.password,
            organization_id=args.organization_id, allow_insecure=args.allow_insecure,
        )
    except ConfigurationError as exc:
        raise ConfigurationError(as_flags(str(exc))) from None


def connect(connection: ArthurConnection) -> ArthurAI:
    """An ``ArthurAI`` client for ``connection`` (imports ``arthurai``).

    ``verify_ssl`` is passed explicitly: with a login, the SDK hands its token refresher the raw
    argument, so ``VERIFY_SSL=false`` read by the SDK alone fails against a self-signed server.
    """
    from arthurai import ArthurAI

    return ArthurAI(
        url=connection.url,
        access_key=connection.api_key,
        login=connection.login,
        password=connection.password,
        organization_id=connection.organization_id,
        allow_insecure=connection.allow_insecure,
        verify_ssl=connection.verify_ssl,
    )


def find_model_id(client: ArthurAI, partner_model_id: str) -> str | None:
    """The id of the model with this partner model id, or None when Arthur has none (404)."""
    from arthurai.client.validation import validate_response_status

    # ArthurAI.get_model raises the same ResponseClientError for 404 as for 401/403: ask directly.
    response = client.client.get(
        f"/models/{quote(partner_model_id, safe='')}",
        params={"id_type": "partner_model_id"},
        return_raw_response=True,
        validate_response_status=False,
    )
    if response.status_code == HTTPStatus.NOT_FOUND:
        return None
    validate_response_status(response, HTTPStatus.OK)
    return response.json()["id"]


def create_model(client: ArthurAI, partner_model_id: str | None = None, display_name: str | None = None) -> str:
    """Onboard the generative-text model for otel-arthur's records and return its Arthur id.

    With ``partner_model_id`` an existing model of that id is returned instead of creating another.
    """
    from arthurai.common.constants import InputType, OutputType, Stage

    if partner_model_id is not None:
        existing = find_model_id(client, partner_model_id)
        if existing is not None:
            logger.info("Model %r already exists: %s", partner_model_id, existing)
            return existing
    if partner_model_id is None and display_name is None:
        display_name = DEFAULT_DISPLAY_NAME
    model = client.model(
        partner_model_id=partner_model_id,
        display_name=display_name,
        input_type=InputType.NLP,
        output_type=OutputType.TokenSequence,
    )
    with warnings.catch_warnings():
        # its attribute review uses pandas APIs deprecated since; noise for our users
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        model.build_token_sequence_model(input_column=PROMPT, output_text_column=COMPLETION)
    for name, spec in FIELDS.items():
        if name not in (PROMPT, COMPLETION):
            model.add_attribute(name=name, value_type=spec.value_type, stage=Stage.NonInputData)
    model_id = model.save()
    logger.info("Created model %r with %d attributes: %s", model.partner_model_id, len(FIELDS), model_id)
    return model_id


def run(args: argparse.Namespace) -> int:
    connection = resolve_connection(args)  # fail on settings before paying for the SDK import
    logger.info("Connecting to Arthur at %s (importing arthurai takes a few seconds)", display_url(connection.url))
    import arthurai  # noqa: F401  (initialises its logging, undone below)

    # The SDK logs INFO to stdout through its own handlers and save() draws a spinner there; stdout
    # carries only this command's output, the model id, so route both to our logging / stderr.
    logging.getLogger("arthurai").handlers.clear()
    with contextlib.redirect_stdout(sys.stderr):
        model_id = create_model(connect(connection), args.partner_model_id, args.display_name)
    print(model_id)
    return 0
