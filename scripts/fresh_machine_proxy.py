"""A minimal HTTP proxy for scripts/test-fresh-machine: the chroot's only way to the package registries.

    python3 scripts/fresh_machine_proxy.py LISTEN_ADDRESS PORT ALLOWED_CLIENT

CONNECT (HTTPS: crates.io, PyPI) is tunnelled as it is; a plain request (apt's http:// mirror) is
sent on to its server in origin form with `Connection: close`, one request per connection (apt then
opens another). Only ALLOWED_CLIENT may connect. Prints "proxy ready" once it listens.
"""

import socket
import socketserver
import sys
import threading
from urllib.parse import urlsplit


def pipe(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        client = self.request
        if self.client_address[0] != self.server.allowed:
            return
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk or len(head) > 65536:
                return
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        request_line, *headers = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)), timeout=30)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            url = urlsplit(target)
            upstream = socket.create_connection((url.hostname, url.port or 80), timeout=30)
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            kept = [h for h in headers if h.split(":", 1)[0].strip().lower() not in ("connection", "proxy-connection", "keep-alive")]
            upstream.sendall(f"{method} {path} {version}\r\n".encode("latin-1")
                             + "".join(f"{h}\r\n" for h in kept).encode("latin-1")
                             + b"Connection: close\r\n\r\n")
        upstream.settimeout(None)
        if rest:
            upstream.sendall(rest)
        back = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
        back.start()
        pipe(client, upstream)
        back.join()


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    address, port, allowed = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with Server((address, port), Handler) as server:
        server.allowed = allowed
        print("proxy ready", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
