"""``fedpriv-certs``: the TLS certificates and SuperNode keys a real federation needs.

    fedpriv-certs ca --out certs/                      CA certificate + key (coordinator)
    fedpriv-certs server --ca certs/ --out certs/ --host superlink.example.org --ip 10.0.0.5
    fedpriv-certs site-key --out keys/ --name hospital-a   SuperNode key pair (at the site)

Formats are what Flower 1.42 reads: PEM certificates, PKCS8 PEM TLS keys; a SuperNode's
private key in OpenSSH format (EC P-384) and its public key on one OpenSSH line
(``ecdsa-sha2-nistp384 AAAA...``), which the coordinator registers with
``flwr supernode register``. Private keys are written with mode 0600; nothing is overwritten.
The same files can be made with openssl / ssh-keygen (see README).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CURVE = ec.SECP384R1  # Flower's documented SuperNode key curve; used for TLS keys too


def _write_new(path: Path, data: bytes, private: bool = False) -> Path:
    """Create ``path`` (never overwrite); private files are readable by their owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600 if private else 0o644)
    except FileExistsError as err:
        raise FileExistsError(f"{path} exists; refusing to overwrite a key or certificate") from err
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return path


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    if days < 1:
        raise ValueError(f"validity must be at least 1 day, got {days}")
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)


def make_ca(out: Path, name: str = "fedpriv federation CA", days: int = 3650) -> Path:
    """A self-signed CA: ``ca.crt`` (give it to every site) and ``ca.key`` (keep it private)."""
    key = ec.generate_private_key(CURVE())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start, end = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    _write_new(out / "ca.key", _pkcs8(key), private=True)
    return _write_new(out / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))


def make_server_certificate(
    ca_dir: Path, out: Path, hosts: Sequence[str], ips: Sequence[str], days: int = 825
) -> Path:
    """``server.pem`` + ``server.key`` for the SuperLink, signed by the CA in ``ca_dir``, with
    every DNS name and IP address sites will connect to as subject alternative names."""
    if not hosts and not ips:
        raise ValueError("name at least one --host or --ip the sites will connect to")
    addresses = [ipaddress.ip_address(ip) for ip in ips]  # ValueError names a bad one
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_dir / 'ca.key'} is not an EC key made by fedpriv-certs ca")
    key = ec.generate_private_key(CURVE())
    names = [x509.DNSName(h) for h in hosts] + [x509.IPAddress(a) for a in addresses]
    start, end = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (list(hosts) or list(ips))[0])])
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(end, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_new(out / "server.key", _pkcs8(key), private=True)
    return _write_new(out / "server.pem", cert.public_bytes(serialization.Encoding.PEM))


def make_site_key(out: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode's key pair: ``<name>`` (OpenSSH private key, stays at the site) and
    ``<name>.pub`` (one OpenSSH line, sent to the coordinator to register)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"a site key name must be a plain file name, got {name!r}")
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return (
        _write_new(out / name, private, private=True),
        _write_new(out / f"{name}.pub", public + b"\n"),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedpriv-certs", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ca = commands.add_parser("ca", help="create the federation's CA (coordinator)")
    ca.add_argument("--out", type=Path, required=True)
    ca.add_argument("--name", default="fedpriv federation CA")
    ca.add_argument("--days", type=int, default=3650)
    server = commands.add_parser("server", help="SuperLink TLS certificate signed by the CA")
    server.add_argument("--ca", type=Path, required=True, help="folder with ca.crt and ca.key")
    server.add_argument("--out", type=Path, required=True)
    server.add_argument("--host", action="append", default=[], help="DNS name (repeatable)")
    server.add_argument("--ip", action="append", default=[], help="IP address (repeatable)")
    server.add_argument("--days", type=int, default=825)
    site = commands.add_parser("site-key", help="a SuperNode's authentication key pair")
    site.add_argument("--out", type=Path, required=True)
    site.add_argument("--name", required=True, help="file name, e.g. the site's name")
    args = parser.parse_args(argv)
    try:
        if args.command == "ca":
            written = [make_ca(args.out, args.name, args.days)]
        elif args.command == "server":
            written = [make_server_certificate(args.ca, args.out, args.host, args.ip, args.days)]
        else:
            written = list(make_site_key(args.out, args.name))
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"fedpriv-certs: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
