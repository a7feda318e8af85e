"""Certificates for mTLS tests, minted with `cryptography`: a CA, a server certificate, and client
certificates carrying SPIFFE URI SANs as Istio's workload certificates do; and an HTTPS client."""

import datetime
import http.client
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class ServerTls:
    cert: Path
    key: Path
    ca: Path
    require_client_certificate: bool


@dataclass
class ClientCert:
    cert: Path
    key: Path


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory, stem, certificate, key):
    cert_path, key_path = Path(directory) / f"{stem}.pem", Path(directory) / f"{stem}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Authority:
    """A throwaway CA in `directory` that signs server and SPIFFE client certificates."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder().subject_name(_name("jwt-authz test CA")).issuer_name(_name("jwt-authz test CA"))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_path, _ = _write(self.directory, "ca", self.certificate, self.key)

    def _issue(self, stem, common_name, sans):
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(self.certificate.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return _write(self.directory, stem, builder.sign(self.key, hashes.SHA256()), key)

    def server(self, require_client_certificate=True):
        cert, key = self._issue("server", "shop.example", [x509.DNSName("shop.example")])
        return ServerTls(cert, key, self.ca_path, require_client_certificate)

    def spiffe_client(self, spiffe_id):
        """A workload certificate: the SPIFFE ID as its URI SAN, as Istio issues them."""
        stem = "client-" + spiffe_id.replace("://", "-").replace("/", "-")
        return ClientCert(*self._issue(stem, "workload", [x509.UniformResourceIdentifier(spiffe_id)]))


class _ServerNameConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 asking for `server_name` (SNI), which http.client would take from the host."""

    def __init__(self, port, context, server_name):
        super().__init__("127.0.0.1", port, timeout=10, context=context)
        self._server_name = server_name

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._server_name)


def https_request(port, path, client=None, ca=None, server_name="shop.example", headers=None):
    """GET over TLS with SNI `server_name`, presenting `client` (a ClientCert) when given;
    returns (status, headers, body)."""
    context = ssl.create_default_context(cafile=str(ca)) if ca else ssl.create_default_context()
    context.check_hostname = False
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    connection = _ServerNameConnection(port, context, server_name)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read().decode("utf-8", errors="replace")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()
