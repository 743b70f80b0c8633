"""A merchant's webhook receiver for paygate's tests.

It verifies every delivery with the `standardwebhooks` package (an implementation independent of
paygate's), records it, and answers as told. Control endpoints:
  POST /control/secrets  {"secrets": ["whsec_..."]}   secrets to verify with (any may match)
  POST /control/answer   {"fail": N, "status": 500}   answer `status` to the next N deliveries
  GET  /control/received                             what arrived, and how many were invalid
Prints {"message": "receiver ready", "port": N} when listening. Usage: webhook_receiver.py [PORT]
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

LOCK = threading.Lock()
STATE = {"secrets": [], "fail": 0, "status": 500, "received": [], "invalid": 0, "requests": 0}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/control/received":
            with LOCK:
                self._json(200, {k: STATE[k] for k in ("received", "invalid", "requests")})
        else:
            self._json(404, {})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
        if self.path == "/control/secrets":
            with LOCK:
                STATE["secrets"] = json.loads(body)["secrets"]
            return self._json(200, {})
        if self.path == "/control/answer":
            with LOCK:
                STATE.update(json.loads(body))
            return self._json(200, {})
        headers = {k.lower(): v for k, v in self.headers.items()}
        with LOCK:
            STATE["requests"] += 1
            secrets = list(STATE["secrets"])
        verified = None
        for secret in secrets:
            try:
                verified = Webhook(secret).verify(body, headers)
                break
            except WebhookVerificationError:
                continue
        with LOCK:
            if verified is None:
                STATE["invalid"] += 1
                return self._json(400, {"error": "bad signature"})
            if STATE["fail"] > 0:
                STATE["fail"] -= 1
                return self._json(STATE["status"], {})
            STATE["received"].append({
                "webhook_id": headers["webhook-id"],
                "type": verified.get("type"),
                "event_id": (verified.get("data") or {}).get("event_id"),
                "payment_id": ((verified.get("data") or {}).get("payment") or {}).get("payment_id"),
                "status": ((verified.get("data") or {}).get("payment") or {}).get("status"),
                "customer_uid": ((verified.get("data") or {}).get("payment") or {}).get("customer_uid"),
                "delivery_id": ((verified.get("data") or {}).get("delivery") or {}).get("delivery_id"),
            })
        self._json(200, {"ok": True})


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(json.dumps({"message": "receiver ready", "port": server.server_address[1]}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
