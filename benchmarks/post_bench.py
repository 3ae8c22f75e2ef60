"""CPU of one inferences POST of N rows already encoded, by HTTP client: requests, urllib3, http.client, and
the package's own ``ArthurClient.send_inferences`` (urllib3, the 207 parsed and checked).

    uv run --frozen python benchmarks/post_bench.py                    # 500 rows a POST, 200 POSTs each
    uv run --frozen python benchmarks/post_bench.py --rows 4 --posts 1000

The rows are real generation records bound to a model holding every field, joined into one body
once; each client POSTs it over one keep-alive connection to the local Arthur (its own process, not
counted) and reads the 207 whole, then parses it with orjson and, separately, with the stdlib's
json (what ``requests``' ``Response.json()`` uses). The figure is this thread's CPU
(``time.thread_time``) per POST, interleaved by round so a busy moment touches every client alike.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

ROUNDS = 5


def encoded_rows(arthur_url: str, model_id: str, count: int) -> list[bytes]:
    from otel_arthur.binding import bind
    from otel_arthur.clients.v3 import ArthurClient, encode_row
    from otel_arthur.config import ArthurSettings
    from otel_arthur.mapping import map_span

    client = ArthurClient(ArthurSettings.resolve(url=arthur_url, api_key=c.API_KEY, model_id=model_id,
                                                 allow_insecure=True))
    binding = bind(client.get_model(model_id))
    client.close()
    records = [record for span in c.sdk_spans(count * 2) if (record := map_span(span)) is not None]
    return [encode_row(binding.to_row(record)) for record in records[:count]]


def clients(arthur_url: str, path: str, headers: dict[str, str]) -> dict[str, Callable[[bytes], bytes]]:
    """One POST function per client, each over its own keep-alive connection."""
    import requests
    import urllib3

    session = requests.Session()
    session.trust_env = False  # as the delivery session: the environment is read once, not per request

    def with_requests(body: bytes) -> bytes:
        return session.post(arthur_url + path, data=body, headers=headers, timeout=(10, 30)).content

    pool = urllib3.PoolManager(maxsize=1, retries=False, timeout=urllib3.Timeout(connect=10, read=30))

    def with_urllib3(body: bytes) -> bytes:
        return pool.request("POST", arthur_url + path, body=body, headers=headers).data

    target = urlsplit(arthur_url)
    connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port, timeout=30)

    def with_http_client(body: bytes) -> bytes:
        connection.request("POST", path, body, headers)
        return connection.getresponse().read()

    from otel_arthur.clients.v3 import ArthurClient
    from otel_arthur.config import ArthurSettings

    model_id = path.split("/")[-2]
    client = ArthurClient(ArthurSettings.resolve(url=arthur_url, api_key=headers["Authorization"], model_id=model_id,
                                                 allow_insecure=True))

    def with_arthur_client(body: bytes) -> bytes:
        results = client.send_inferences(model_id, range(body.count(b'"partner_inference_id"')), body)
        return b"" if results else b"no results"

    return {"requests": with_requests, "urllib3": with_urllib3, "http.client": with_http_client,
            "ArthurClient": with_arthur_client}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500, help="rows per POST (default: %(default)s)")
    parser.add_argument("--posts", type=int, default=200, help="POSTs per client (default: %(default)s)")
    args = parser.parse_args()

    import orjson

    with tempfile.TemporaryDirectory(prefix="otel-arthur-post-") as work, \
            c.local_arthur(Path(work), Path(work) / "arthur.sqlite3") as arthur:
        model_id = c.create_model(arthur.url)
        rows = encoded_rows(arthur.url, model_id, args.rows)
        body = b"[" + b",".join(rows) + b"]"
        headers = {"Authorization": c.API_KEY, "Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "otel-arthur-bench"}
        posts = clients(arthur.url, f"/api/v3/models/{model_id}/inferences", headers)
        answer = b""
        for name, post in posts.items():  # connections open and warm before the clock starts
            if name != "ArthurClient":  # it parses the 207 itself
                answer = post(body)
        assert orjson.loads(answer)["counts"]["success"] == len(rows), answer[:300]
        cpu = dict.fromkeys(posts, 0.0)
        per_round = max(1, args.posts // ROUNDS)
        for _ in range(ROUNDS):
            for name, post in posts.items():
                started = time.thread_time()
                for _ in range(per_round):
                    post(body)
                cpu[name] += time.thread_time() - started
        done = per_round * ROUNDS
        parse = {}
        for name, loads in (("orjson", orjson.loads), ("json", json.loads)):
            started = time.thread_time()
            for _ in range(done):
                loads(answer)
            parse[name] = (time.thread_time() - started) / done * 1e6
        print(f"{len(rows)} rows ({len(body)} bytes) per POST, {done} POSTs per client, 207 of {len(answer)} bytes")
        for name, seconds in cpu.items():
            per_post = seconds / done * 1e6
            print(f"  {name:12s} {per_post:8.0f} µs CPU per POST  {per_post / len(rows):7.2f} µs per record")
        for name, per_post in parse.items():
            print(f"  207 parse, {name:7s} {per_post:6.0f} µs per POST  {per_post / len(rows):7.2f} µs per record")


if __name__ == "__main__":
    main()
