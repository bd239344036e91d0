"""A private certificate authority for the links between seqrec services (`seqrec certs`).

Writes `ca.pem` (the CA every service trusts), `ca-key.pem`, and per service `<name>.pem` and
`<name>-key.pem`: an ECDSA P-256 certificate valid as server and as client (mutual TLS), naming the
service, `localhost`, 127.0.0.1 and ::1 (so a probe inside the container verifies it), and
`<name>.<domain>` for each `--domain` (e.g. `seqrec.svc.cluster.local`). Keys are written owner-read-only.
With `--if-missing`, an existing complete set is left as it is (a compose init step runs at every `up`).

For production, certificates from your own PKI (cert-manager, Vault) work the same way: the services
only read the PEM files named by SEQREC_TLS_* (shared/tls.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

DEFAULT_NAMES = ("ranker", "embedder", "trainer", "gateway")
LOOPBACK_IPS = ("127.0.0.1", "::1")


def _modules():  # noqa: ANN202 - cryptography is needed only here, imported on use
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:
        raise SystemExit("seqrec certs needs the cryptography package: pip install 'seqrec[certs]'") from exc
    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _write(path: Path, data: bytes, secret: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


class Authority:
    """A self-signed CA that issues service certificates as PEM files under `root`."""

    def __init__(self, root: Path, name: str = "seqrec", days: float = 365.0):
        x509, hashes, serialization, ec, _, NameOID = _modules()
        self.root, self.days = Path(root), days
        self.root.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} internal CA")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        prefix = "ca" if name == "seqrec" else f"{name}-ca"
        self.pem = self.root / f"{prefix}.pem"
        _write(self.pem, self.cert.public_bytes(serialization.Encoding.PEM))
        _write(self.root / f"{prefix}-key.pem", self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), secret=True)

    def issue(self, name: str, dns: Sequence[str] | None = None, ips: Sequence[str] = LOOPBACK_IPS
              ) -> tuple[Path, Path]:
        """(certificate, key) files for service `name`; `dns` defaults to the name and localhost."""
        x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID = _modules()
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        names = [x509.DNSName(d) for d in (dns if dns is not None else (name, "localhost"))]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=self.days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.key, hashes.SHA256()))
        cert_path, key_path = self.root / f"{name}.pem", self.root / f"{name}-key.pem"
        _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()), secret=True)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path


def service_files(root: Path, names: Sequence[str]) -> list[Path]:
    """Every file `write_service_certs` produces."""
    return [root / "ca.pem", root / "ca-key.pem"] + [root / f"{n}{s}.pem" for n in names for s in ("", "-key")]


def write_service_certs(root: Path, names: Sequence[str] = DEFAULT_NAMES, domains: Sequence[str] = (),
                        days: float = 365.0) -> list[Path]:
    """A fresh CA and one certificate per service under `root`; returns the files written."""
    ca = Authority(root, days=days)
    for name in names:
        ca.issue(name, dns=[name, "localhost", *(f"{name}.{d.strip('.')}" for d in domains)])
    return service_files(Path(root), names)


def add_certs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for the PEM files")
    parser.add_argument("--names", default=",".join(DEFAULT_NAMES),
                        help="comma-separated service names, one certificate each (default: %(default)s)")
    parser.add_argument("--domain", action="append", default=[],
                        help="also name <service>.<domain> in each certificate (repeatable), "
                             "e.g. seqrec.svc.cluster.local")
    parser.add_argument("--days", type=float, default=365.0, help="validity (default: %(default)s)")
    parser.add_argument("--if-missing", action="store_true",
                        help="leave an existing complete set alone (for an init step run at every start)")


def run_certs(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    if not names or not args.days > 0:
        print("seqrec certs: error: --names needs at least one name and --days must be positive")
        return 2
    if args.if_missing and all(p.is_file() for p in service_files(args.out, names)):
        print(f"certificates already in {args.out}; left as they are")
        return 0
    files = write_service_certs(args.out, names, args.domain, args.days)
    print(f"wrote {len(files)} files to {args.out}: CA ca.pem, certificates for {', '.join(names)}")
    return 0
