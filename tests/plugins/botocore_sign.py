#!/usr/bin/env python3
"""Signs requests with botocore, the reference for chatkit's SigV4 (docs/protocols.md §4), for the
property test in aws_sigv4_test.cpp.

usage: botocore_sign.py CASES.json OUT.json

Each case is signed two ways, both with the clock frozen at the case's `epoch`:
  direct: botocore.auth.SigV4Auth(credentials, service, region) on an AWSRequest built from the
          case's method, host, wire path, query, headers and body (the same inputs chatkit gets);
  client: a real 'bedrock-runtime' client calls Converse/ConverseStream for `model_id`, and the
          request is captured at 'before-send', so nothing goes over the network. This shows what
          botocore itself puts on the wire: the path it builds for the model id, its body bytes,
          and which headers it signs.
"""
import datetime
import json
import os
import sys
from unittest import mock

try:
    import botocore
    import botocore.auth
    import botocore.session
    from botocore.awsrequest import AWSRequest, AWSResponse
    from botocore.config import Config
    from botocore.credentials import Credentials
except ImportError as e:  # the C++ test turns this into a failure, not a skip
    print(f"botocore_sign.py: cannot import botocore ({e}); install it with `pip install botocore`",
          file=sys.stderr)
    sys.exit(3)

# Nothing from the environment may change what botocore signs (AWS_BEARER_TOKEN_BEDROCK would even
# switch it to bearer auth), nor may a config file.
for name in list(os.environ):
    if name.startswith("AWS_"):
        del os.environ[name]
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


class CapturingSigV4Auth(botocore.auth.SigV4Auth):
    def canonical_request(self, request):
        self.captured_canonical_request = super().canonical_request(request)
        return self.captured_canonical_request

    def string_to_sign(self, request, canonical_request):
        self.captured_string_to_sign = super().string_to_sign(request, canonical_request)
        return self.captured_string_to_sign


def frozen(epoch):
    now = datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).replace(tzinfo=None)
    return mock.patch("botocore.auth.get_current_datetime", return_value=now)


def credentials_of(case):
    return Credentials(case["access_key"], case["secret_key"], case["token"] or None)


def sign_direct(case):
    d = case["direct"]
    url = "https://" + d["host"] + d["path"] + ("?" + d["query"] if d["query"] else "")
    request = AWSRequest(method=d["method"], url=url, data=d["body"].encode("utf-8"))
    for name, value in d["headers"]:
        request.headers[name] = value  # HTTPHeaders appends, so repeated names are kept in order
    auth = CapturingSigV4Auth(credentials_of(case), case["service"], case["region"])
    with frozen(case["epoch"]):
        auth.add_auth(request)
    return {
        "authorization": request.headers["Authorization"],
        "canonical_request": auth.captured_canonical_request,
        "string_to_sign": auth.captured_string_to_sign,
    }


session = botocore.session.get_session()
clients = {}


def client_for(case):
    key = (case["region"], case["access_key"], case["secret_key"], case["token"])
    if key not in clients:
        client = session.create_client(
            "bedrock-runtime", region_name=case["region"],
            aws_access_key_id=case["access_key"], aws_secret_access_key=case["secret_key"],
            aws_session_token=case["token"] or None,
            config=Config(retries={"max_attempts": 1, "mode": "standard"}))
        client.meta.events.register("before-send", capture)
        clients[key] = client
    return clients[key]


captured = {}


def capture(request, **_):
    captured["url"] = request.url
    captured["body"] = request.body
    captured["headers"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()}
    return AWSResponse(request.url, 400, {}, None)  # stops here; the parse error is expected


def sign_client(case):
    c = case["client"]
    client = client_for(case)
    captured.clear()
    call = client.converse if c["action"] == "converse" else client.converse_stream
    with frozen(case["epoch"]):
        try:
            call(modelId=c["model_id"], messages=[{"role": "user", "content": [{"text": c["text"]}]}])
        except Exception:  # noqa: BLE001 - the fake response cannot be parsed; the capture is done
            pass
    if "url" not in captured:
        raise RuntimeError(f"case {case['id']}: botocore sent nothing")
    body = captured["body"] or b""
    return {"url": captured["url"], "body": body.decode("utf-8"), "headers": captured["headers"]}


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    out = []
    for case in cases:
        r = {"id": case["id"], "botocore_version": botocore.__version__, "direct": sign_direct(case)}
        if case.get("client"):
            r["client"] = sign_client(case)
        out.append(r)
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
