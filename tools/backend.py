"""Demo backend that answers every request with a JSON echo of its method, path and headers."""

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")


class EchoHandler(BaseHTTPRequestHandler):
    """Echoes the request back as JSON, keeping HTTP/1.1 connections alive."""

    protocol_version = "HTTP/1.1"
    server_version = "demo-backend"

    def _echo(self):
        self._drain_body()
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        payload = json.dumps({"method": self.command, "path": self.path, "headers": headers}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-backend", "demo")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _drain_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                self.rfile.read(size + 2)
                if size == 0:
                    break
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)

    def log_message(self, format, *args):
        pass


for _method in METHODS:
    setattr(EchoHandler, f"do_{_method}", EchoHandler._echo)


class EchoServer(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops connections when several Envoy workers forward a
    # burst of requests at once (Envoy then answers 503 "connection timeout").
    request_queue_size = 128


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    args = parser.parse_args()
    server = EchoServer((args.host, args.port), EchoHandler)
    server.daemon_threads = True
    if args.port_file:
        temporary = f"{args.port_file}.tmp"
        with open(temporary, "w", encoding="ascii") as handle:
            handle.write(str(server.server_address[1]))
        os.replace(temporary, args.port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
