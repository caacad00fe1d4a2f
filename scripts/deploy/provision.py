"""Provision a federated TarDiff deployment: a CA, the SuperLink's TLS certificate, and one
SuperNode authentication key pair per hospital.

    python scripts/deploy/provision.py --out keys --hospitals hospital_a,hospital_b,hospital_c \
        [--host coordinator.example.org] [--ip 10.0.0.5]
    python scripts/deploy/provision.py node-key --out keys/hospital_a --name hospital_a   # at a hospital

(``python -m scripts.deploy.provision ...`` from the repository root works too.)

Layout written under ``--out`` (folders 0700, private keys 0600, never commit them; ``keys/``
is in .gitignore):

    ca/ca.key  ca/ca.crt                 the CA; ca.key stays with whoever provisions
    superlink/server.key server.crt ca.crt   TLS for the SuperLink (coordinator only)
    supernodes/<name>/<name>.key         the hospital's private key (hand to that hospital only)
    supernodes/<name>/<name>.pub         its public key (registered with the SuperLink)
    supernodes/<name>/ca.crt             the CA certificate the SuperNode verifies the SuperLink with
    authorized/<name>.pub                every public key the coordinator registers

In a real deployment a hospital runs ``node-key`` itself and sends only ``<name>.pub`` to the
coordinator; its private key never leaves the hospital. SuperNode keys are ECDSA P-384 in
OpenSSH format (what ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode
register`` read in Flower 1.42); the TLS certificate is ECDSA P-256 with SANs for localhost,
127.0.0.1, ::1 and every ``--host`` / ``--ip``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["make_ca", "make_server_cert", "make_node_key", "provision"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _write(path: Path, data: bytes, mode: int) -> Path:
    """Write ``data`` with ``mode`` from the first byte on (no window with looser permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def make_ca(folder: Path, *, name: str = "Federated TarDiff CA", days: int = 3650,
            overwrite: bool = False) -> tuple[Path, Path]:
    """(ca.key, ca.crt) in ``folder``; an existing CA is reused unless ``overwrite``."""
    folder = _private_dir(folder)
    key_path, crt_path = folder / "ca.key", folder / "ca.crt"
    if key_path.exists() and crt_path.exists() and not overwrite:
        return key_path, crt_path
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write(key_path, _pem_key(key), 0o600)
    _write(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return key_path, crt_path


def make_server_cert(folder: Path, ca_key_path: Path, ca_crt_path: Path, *, hosts: list[str],
                     ips: list[str], days: int = 825) -> tuple[Path, Path, Path]:
    """(server.key, server.crt, ca.crt) for the SuperLink, signed by the CA."""
    folder = _private_dir(folder)
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
    ca_crt = x509.load_pem_x509_certificate(ca_crt_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    dns = list(dict.fromkeys(["localhost", *hosts]))
    addresses = list(dict.fromkeys(["127.0.0.1", "::1", *ips]))
    san = [x509.DNSName(h) for h in dns] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[-1])]))
        .issuer_name(ca_crt.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_crt.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_path = _write(folder / "server.key", _pem_key(key), 0o600)
    crt_path = _write(folder / "server.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    ca_copy = _write(folder / "ca.crt", ca_crt_path.read_bytes(), 0o644)
    return key_path, crt_path, ca_copy


def check_names(names: list[str]) -> None:
    """Raise ``ValueError`` naming every invalid or repeated hospital name (before anything is written)."""
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise ValueError(f"hospital name(s) {', '.join(repr(n) for n in bad)}: use letters, digits, '_', '-', '.' "
                         "(at most 64, starting with a letter or digit)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"hospital name(s) given twice: {', '.join(repeated)}")
    if not names:
        raise ValueError("no hospital names given (--hospitals)")


def make_node_key(folder: Path, name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """(``<name>.key``, ``<name>.pub``): an ECDSA P-384 pair in OpenSSH format."""
    check_names([name])
    folder = _private_dir(folder)
    key_path, pub_path = folder / f"{name}.key", folder / f"{name}.pub"
    if key_path.exists() and pub_path.exists() and not overwrite:
        return key_path, pub_path
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(key_path, private, 0o600)
    _write(pub_path, public + f" {name}\n".encode(), 0o644)
    return key_path, pub_path


def provision(out: Path, hospitals: list[str], *, hosts: list[str], ips: list[str],
              overwrite: bool = False) -> dict:
    """Everything of a deployment under ``out``; returns the paths written. Every name and IP
    address is checked before the first file is written (``ValueError``)."""
    check_names(hospitals)
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"--ip {ip!r} is not an IP address") from None
    out = _private_dir(out)
    ca_key, ca_crt = make_ca(out / "ca", overwrite=overwrite)
    server_key, server_crt, server_ca = make_server_cert(out / "superlink", ca_key, ca_crt, hosts=hosts, ips=ips)
    nodes = {}
    _private_dir(out / "supernodes")
    _private_dir(out / "authorized")
    for name in hospitals:
        folder = out / "supernodes" / name
        key, pub = make_node_key(folder, name, overwrite=overwrite)
        _write(folder / "ca.crt", ca_crt.read_bytes(), 0o644)
        _write(out / "authorized" / f"{name}.pub", pub.read_bytes(), 0o644)
        nodes[name] = {"private_key": str(key), "public_key": str(pub), "ca": str(folder / "ca.crt")}
    return {"ca": str(ca_crt), "server_cert": str(server_crt), "server_key": str(server_key),
            "server_ca": str(server_ca), "supernodes": nodes}


def warn_if_tracked(out: Path) -> None:
    """Warn when ``out`` lies in a git work tree without being ignored (keys must never be committed)."""
    out = out.resolve()
    probe = out if out.exists() else out.parent
    try:
        inside = subprocess.run(["git", "-C", str(probe), "rev-parse", "--is-inside-work-tree"],
                                capture_output=True, text=True, timeout=10)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return
        ignored = subprocess.run(["git", "-C", str(probe), "check-ignore", "-q", str(out / "ca" / "ca.key")],
                                 capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return
    if ignored.returncode != 0:
        print(f"WARNING: {out} is inside a git work tree and not ignored; keep keys in keys/ (ignored) "
              "or outside the repository, and never commit them", file=sys.stderr)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "node-key":
        parser = argparse.ArgumentParser(prog="provision.py node-key",
                                         description="Create one SuperNode key pair (run at the hospital).")
        parser.add_argument("--out", required=True, type=Path, help="folder for <name>.key and <name>.pub")
        parser.add_argument("--name", required=True, help="the hospital's name, e.g. hospital_a")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing key pair")
        args = parser.parse_args(argv[1:])
        try:
            check_names([args.name])
        except ValueError as err:
            parser.error(str(err))
        warn_if_tracked(args.out)
        key, pub = make_node_key(args.out, args.name, overwrite=args.overwrite)
        print(f"private key (keep it at the hospital): {key}\npublic key (send to the coordinator): {pub}")
        return 0
    parser = argparse.ArgumentParser(prog="provision.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("keys"), help="output folder (default: keys/)")
    parser.add_argument("--hospitals", default="hospital_a,hospital_b,hospital_c",
                        help="comma-separated hospital names (default: hospital_a,hospital_b,hospital_c)")
    parser.add_argument("--host", default="", help="comma-separated DNS names of the coordinator for the SAN")
    parser.add_argument("--ip", default="", help="comma-separated IP addresses of the coordinator for the SAN")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing CA and node keys")
    args = parser.parse_args(argv)
    try:
        check_names(_split(args.hospitals))
        for ip in _split(args.ip):
            ipaddress.ip_address(ip)
    except ValueError as err:  # before anything is written
        parser.error(str(err))
    warn_if_tracked(args.out)
    paths = provision(args.out, _split(args.hospitals), hosts=_split(args.host), ips=_split(args.ip),
                      overwrite=args.overwrite)
    print(f"CA certificate:        {paths['ca']}")
    print(f"SuperLink TLS:         {paths['server_cert']} / {paths['server_key']}")
    for name, p in paths["supernodes"].items():
        print(f"{name}: private {p['private_key']}  public {p['public_key']}")
    print(f"register with:         bash scripts/deploy/register_supernodes.sh --cli-home <dir> {args.out}/authorized/*.pub")
    return 0


if __name__ == "__main__":
    sys.exit(main())
