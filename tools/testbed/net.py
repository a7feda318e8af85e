"""Loopback networking: one HTTP request sent exactly as given, and free ports."""

import http.client
import socket


def http_request(port, method, path, headers=None, body=None, timeout=10.0):
    """Send one request with the path exactly as given; returns (status, headers, body text).
    headers: a dict, or a list of (name, value) pairs to send a header more than once."""
    headers = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        has_host = any(name.lower() == "host" for name, _ in headers)
        connection.putrequest(method, path, skip_host=has_host, skip_accept_encoding=True)
        if isinstance(body, str):
            body = body.encode()
        if body is not None and not any(name.lower() == "content-length" for name, _ in headers):
            headers.append(("Content-Length", str(len(body))))
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        text = response.read().decode("utf-8", errors="replace")
        response_headers = {}
        for name, value in response.getheaders():
            name = name.lower()
            response_headers[name] = f"{response_headers[name]}, {value}" if name in response_headers else value
        return response.status, response_headers, text
    finally:
        connection.close()


def free_port():
    """A loopback port free right now (and closed: nothing listens on it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_ports(count):
    """Distinct loopback ports free right now, for listeners whose port a config must name."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()
