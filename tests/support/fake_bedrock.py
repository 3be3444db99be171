#!/usr/bin/env python3
"""A fake Amazon Bedrock Runtime for tests: Converse and ConverseStream over real HTTP on 127.0.0.1.

Every request's SigV4 signature is recomputed by botocore, independently of chatkit's signer, and
a mismatch is answered like Bedrock does (403 InvalidSignatureException). Answers are
"echo: <last user text>", as JSON (docs/protocols.md §2.3) or as real event-stream frames (§2.5, §3);
a request with a toolConfig whose last turn holds no toolResult gets a toolUse of the first tool
with {"q": "<last user text>"}, and one whose last turn holds toolResults "tool said: <their
texts>". Like Bedrock, it refuses toolUse or toolResult blocks without a toolConfig, and a
toolResult that answers no toolUse of the turn before.

Faults are scripted by the model id (the part before any ':'), e.g. `fake.throttle-once`:
  throttle-once, throttle-always, notready-once, notready-always, unavailable-once,
  unavailable-always, internal-always, validation, denied, not-found, model-timeout, model-error,
  unrecognized, denied-arn, signature-detail, slow (3 s before answering),
  stream-throttle (a throttlingException frame after the first delta), stream-cut (the connection
  drops after the first delta), corrupt-frame (a frame with a bad CRC after the first delta),
  no-metadata (the stream ends after messageStop, without its metadata event).
Prints {"port": N} on stdout, then serves until stdin closes.
GET /_requests answers the requests seen so far (path, headers, body, signature_ok).
"""
import binascii
import datetime
import json
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SECRETS = {}  # access key id -> (secret, session token)
SEEN = []
COUNTS = {}
LOCK = threading.Lock()


def frame(headers, payload):
    """One event-stream message (docs/protocols.md §3.1): prelude, prelude CRC, headers, payload, CRC."""
    encoded = b""
    for name, value in headers.items():
        raw = value.encode()
        encoded += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(raw)) + raw
    total = 16 + len(encoded) + len(payload)
    prelude = struct.pack(">II", total, len(encoded))
    head = prelude + struct.pack(">I", binascii.crc32(prelude)) + encoded + payload
    return head + struct.pack(">I", binascii.crc32(head))


def event(event_type, body):
    return frame({":message-type": "event", ":event-type": event_type, ":content-type": "application/json"},
                 json.dumps(body).encode())


def exception(exception_type, message):
    return frame({":message-type": "exception", ":exception-type": exception_type, ":content-type": "application/json"},
                 json.dumps({"message": message}).encode())


def verify_signature(method, path, headers, body):
    """Recomputes the Authorization header with botocore from what the client says it signed."""
    auth = headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return False, "missing SigV4 Authorization"
    fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    access_key, date, region, service, _ = fields["Credential"].split("/")
    if access_key not in SECRETS:
        return False, "unknown access key"
    secret, token = SECRETS[access_key]
    signed = fields["SignedHeaders"].split(";")
    request = AWSRequest(method=method, url="http://" + headers["host"] + path, data=body,
                         headers={k: headers[k] for k in signed if k not in ("host", "x-amz-date", "x-amz-security-token")})
    amz_date = headers.get("x-amz-date", "")
    stamp = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    original = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda: stamp
    try:
        botocore.auth.SigV4Auth(Credentials(access_key, secret, token or None), service, region).add_auth(request)
    finally:
        botocore.auth.get_current_datetime = original
    if service != "bedrock":
        return False, "signing name is %r, not 'bedrock'" % service
    if token and headers.get("x-amz-security-token") != token:
        return False, "session token missing"
    return request.headers["Authorization"] == auth, "signature mismatch"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, error_type=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", "fake-request-id")
        if error_type:
            self.send_header("x-amzn-ErrorType", error_type + ":http://internal.amazon.com/coral/com.amazon.bedrock/")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/_requests":
            with LOCK:
                return self.reply(200, SEEN)
        self.reply(404, {"message": "not found"}, "UnknownOperationException")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        parts = self.path.split("/")  # ['', 'model', '<id>', 'converse' | 'converse-stream']
        if len(parts) != 4 or parts[1] != "model" or parts[3] not in ("converse", "converse-stream"):
            return self.reply(404, {"message": "unknown operation"}, "UnknownOperationException")
        model = urllib.parse.unquote(parts[2])
        ok, why = verify_signature("POST", self.path, headers, body)
        request = json.loads(body or b"{}")
        with LOCK:
            SEEN.append({"path": self.path, "model": model, "headers": headers, "body": request, "signature_ok": ok})
            COUNTS[model] = COUNTS.get(model, 0) + 1
            attempt = COUNTS[model]
        if not ok:
            return self.reply(403, {"message": "The request signature we calculated does not match the signature you provided. (" + why + ")"},
                              "InvalidSignatureException")
        fault = model.split(":")[0].split(".", 1)[-1] if model.startswith("fake.") else ""
        plain = {
            "throttle-always": (429, "ThrottlingException", "Too many requests, please wait before trying again."),
            "notready-always": (429, "ModelNotReadyException", "Model is not ready to serve inference requests."),
            "unavailable-always": (503, "ServiceUnavailableException", "Service is unavailable."),
            "internal-always": (500, "InternalServerException", "An internal server error occurred."),
            "validation": (400, "ValidationException", "Malformed input request: 2 schema violations found."),
            "denied": (403, "AccessDeniedException", "You don't have access to the model with the specified model ID."),
            "not-found": (404, "ResourceNotFoundException", "Could not resolve the foundation model."),
            "model-timeout": (408, "ModelTimeoutException", "The model took too long to respond."),
            "model-error": (424, "ModelErrorException", "The model returned an error."),
            "unrecognized": (403, "UnrecognizedClientException", "The security token included in the request is invalid."),
            # What AWS says about who was refused, and how a signature should have been made:
            # an account id, an access key id and a session token a gateway must not pass on.
            "denied-arn": (403, "AccessDeniedException",
                           "User: arn:aws:sts::123456789012:assumed-role/chatkit-fn/AKIAIOSFODNN7EXAMPLE is not authorized to perform: "
                           "bedrock:InvokeModel on resource: arn:aws:bedrock:us-east-1::foundation-model/fake.denied-arn"),
            "signature-detail": (403, "InvalidSignatureException",
                                 "The request signature we calculated does not match the signature you provided. Check your AWS "
                                 "Secret Access Key and signing method. Consult the service documentation for details.\n\n"
                                 "The Canonical String for this request should have been\n'POST\n/model/fake.signature-detail/converse\n\n"
                                 "host:bedrock-runtime.us-east-1.amazonaws.com\nx-amz-security-token:FwoGZXIvYXdzEXAMPLESESSIONTOKEN\n'\n\n"
                                 "The String-to-Sign should have been\n'AWS4-HMAC-SHA256\n20261206T000000Z\n'"),
        }
        once = {"throttle-once": plain["throttle-always"], "notready-once": plain["notready-always"],
                "unavailable-once": plain["unavailable-always"]}
        if fault in plain:
            status, kind, message = plain[fault]
            return self.reply(status, {"message": message}, kind)
        if fault in once and attempt == 1:
            status, kind, message = once[fault]
            return self.reply(status, {"message": message}, kind)
        if fault == "slow":
            time.sleep(3)

        messages = request.get("messages", [])
        has_tool_blocks = any("toolUse" in b or "toolResult" in b for m in messages for b in m.get("content", []))
        if has_tool_blocks and "toolConfig" not in request:
            return self.reply(400, {"message": "The toolConfig field must be defined when using toolUse and toolResult content blocks."},
                              "ValidationException")
        for i, m in enumerate(messages):
            for b in m.get("content", []):
                if "toolResult" in b:
                    used = [u["toolUse"]["toolUseId"] for u in (messages[i - 1].get("content", []) if i > 0 else []) if "toolUse" in u]
                    if b["toolResult"].get("toolUseId") not in used:
                        return self.reply(400, {"message": "The number of toolResult blocks at messages.%d.content exceeds the number of toolUse blocks of previous turn." % i},
                                          "ValidationException")
        last_user = ""
        for m in messages:
            if m.get("role") == "user":
                last_user = " ".join(block["text"] for block in m.get("content", []) if "text" in block)
        results = [c.get("text", "") for b in (messages[-1].get("content", []) if messages else []) if "toolResult" in b
                   for c in b["toolResult"].get("content", [])]
        tools = request.get("toolConfig", {}).get("tools", [])
        if tools and not results:
            return self.tool_use(parts[3], tools[0]["toolSpec"]["name"], last_user)
        words = (("tool said: " + "".join(results)) if results else ("echo: " + last_user)).split()
        usage = {"inputTokens": len(last_user.split()), "outputTokens": len(words),
                 "totalTokens": len(last_user.split()) + len(words)}
        if parts[3] == "converse":
            return self.reply(200, {"output": {"message": {"role": "assistant", "content": [{"text": " ".join(words)}]}},
                                    "stopReason": "end_turn", "usage": usage, "metrics": {"latencyMs": 12}})

        frames = [event("messageStart", {"role": "assistant", "p": "abcdefghijk"})]
        for i, word in enumerate(words):
            frames.append(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": word if i == 0 else " " + word}, "p": "abcdefghijklmnop"}))
            if i == 0 and fault == "stream-throttle":
                frames.append(exception("throttlingException", "Too many tokens, please wait before trying again."))
                break
            if i == 0 and fault == "corrupt-frame":
                bad = bytearray(event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " x"}}))
                bad[-1] ^= 0xFF
                frames.append(bytes(bad))
                break
            if i == 0 and fault == "stream-cut":
                break
        else:
            frames += [event("contentBlockStop", {"contentBlockIndex": 0, "p": "abcdefghijklmnopqrstuvwx"}),
                       event("messageStop", {"stopReason": "end_turn", "p": "abcdefghijklmno"})]
            if fault != "no-metadata":
                frames.append(event("metadata", {"usage": usage, "metrics": {"latencyMs": 232}, "p": "abc"}))
        self.send_frames(frames, fault == "stream-cut")

    def tool_use(self, operation, name, last_user):
        """A toolUse of `name`, as Converse answers one; streamed, its input arrives in two fragments."""
        tool_input = {"q": last_user}
        usage = {"inputTokens": len(last_user.split()), "outputTokens": 9, "totalTokens": len(last_user.split()) + 9}
        if operation == "converse":
            return self.reply(200, {"output": {"message": {"role": "assistant", "content": [
                {"toolUse": {"toolUseId": "tooluse_fake_1", "name": name, "input": tool_input}}]}},
                "stopReason": "tool_use", "usage": usage, "metrics": {"latencyMs": 12}})
        text = json.dumps(tool_input)
        half = len(text) // 2
        self.send_frames([
            event("messageStart", {"role": "assistant"}),
            event("contentBlockStart", {"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "tooluse_fake_1", "name": name}}}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": text[:half]}}}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": text[half:]}}}),
            event("contentBlockStop", {"contentBlockIndex": 0}),
            event("messageStop", {"stopReason": "tool_use"}),
            event("metadata", {"usage": usage, "metrics": {"latencyMs": 40}}),
        ], False)

    def send_frames(self, frames, cut):
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.amazon.eventstream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-amzn-RequestId", "fake-request-id")
        self.end_headers()
        for data in frames:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        if cut:
            self.close_connection = True
            return  # no terminating chunk: the client sees the body end early
        self.wfile.write(b"0\r\n\r\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that timed out and left (the "slow" fault) is expected, not news


def main():
    for pair in sys.argv[1:]:  # ACCESS_KEY=SECRET[=TOKEN]
        key, secret, *token = pair.split("=", 2)
        SECRETS[key] = (secret, token[0] if token else "")
    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    sys.stdin.read()  # serve until the test closes our stdin (or dies)
    server.shutdown()


if __name__ == "__main__":
    main()
