"""Signed release format (Django-free; the sponsor's verifier imports only this module).

A release is a zip holding the released files, ``manifest.json`` and ``manifest.sig``:

* ``manifest.json`` is the canonical JSON of the manifest (sorted keys, no whitespace, UTF-8, no
  NaN), so its bytes are exactly what is signed. Its ``files`` map names each released file:
  ``{"adapter_model.safetensors": {"sha256": "<hex>", "size": <bytes>}, ...}``; the portal adds any
  other metadata (release id, organisation, base model, ...).
* ``manifest.sig`` is the base64 Ed25519 signature of those bytes, followed by a newline.

Keys are PEM files: PKCS#8 private key (file mode 0600), SubjectPublicKeyInfo public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
RELEASE_FILES = ("adapter_model.safetensors", "adapter_config.json", "README.md")
FILE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class SignatureError(ValueError):
    """A signature, a key or a manifest is invalid."""


# ---------------------------------------------------------------------------------------------
# canonical JSON


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8 (not ASCII-escaped), NaN/Infinity refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def manifest_sha256(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(manifest)).hexdigest()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SignatureError("manifest repeats a key")
        out[key] = value
    return out


def _refuse_constant(_text: str) -> None:
    raise SignatureError("manifest holds NaN or Infinity")


def parse_canonical_manifest(data: bytes) -> dict[str, Any]:
    """Parse manifest bytes and insist they are exactly the canonical form of what they hold."""
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except SignatureError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise SignatureError("manifest.json is not valid UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise SignatureError("manifest.json is not a JSON object")
    if canonical_json(obj) != data:
        raise SignatureError("manifest.json is not in canonical form")
    return obj


# ---------------------------------------------------------------------------------------------
# keys


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(encoding=serialization.Encoding.PEM, format=serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """sha256 of the raw 32-byte public key, hex."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def generate_keypair(private_path: Path | str, public_path: Path | str | None = None) -> Ed25519PrivateKey:
    """Write a new private key (PEM, mode 0600, never overwriting) and optionally its public key."""
    key = generate_private_key()
    private_path = Path(private_path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(private_path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(private_key_pem(key))
    except BaseException:
        try:
            private_path.unlink()
        except OSError:
            pass
        raise
    if public_path is not None:
        write_public_key(key, public_path)
    return key


def write_public_key(key: Ed25519PrivateKey | Ed25519PublicKey, path: Path | str) -> None:
    Path(path).write_bytes(public_key_pem(key))


def load_private_key(source: Path | str | bytes, password: bytes | None = None) -> Ed25519PrivateKey:
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError):
        raise SignatureError("not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("the private key is not an Ed25519 key")
    return key


def load_public_key(source: Path | str | bytes) -> Ed25519PublicKey:
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise SignatureError("not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the public key is not an Ed25519 key")
    return key


# ---------------------------------------------------------------------------------------------
# sign / verify


def sign_bytes(data: bytes, private_key: Ed25519PrivateKey) -> str:
    return base64.b64encode(private_key.sign(data)).decode("ascii")


def sign_manifest(manifest: Mapping[str, Any], private_key: Ed25519PrivateKey) -> str:
    """Base64 Ed25519 signature over the canonical manifest bytes."""
    return sign_bytes(canonical_json(manifest), private_key)


def decode_signature(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise SignatureError("signature is not base64 text") from None
    stripped = text.strip()
    if stripped != text.rstrip("\n") or text.count("\n") > 1:
        raise SignatureError("signature file holds more than one base64 line")
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signature is not valid base64") from None
    if len(raw) != 64 or base64.b64encode(raw).decode("ascii") != stripped:
        raise SignatureError("signature is not a canonical base64 Ed25519 signature")
    return raw


def verify_bytes(data: bytes, signature: str | bytes, public_key: Ed25519PublicKey) -> None:
    """Raise SignatureError unless ``signature`` (base64) signs ``data``."""
    raw = decode_signature(signature)
    try:
        public_key.verify(raw, data)
    except InvalidSignature:
        raise SignatureError("the signature does not match the manifest and the public key") from None


def verify_manifest(manifest: Mapping[str, Any] | bytes, signature: str | bytes, public_key: Ed25519PublicKey) -> None:
    data = manifest if isinstance(manifest, bytes) else canonical_json(manifest)
    verify_bytes(data, signature, public_key)


# ---------------------------------------------------------------------------------------------
# release zip


def check_file_name(name: str) -> None:
    if not isinstance(name, str) or not FILE_NAME_RE.fullmatch(name) or name in (MANIFEST_NAME, SIGNATURE_NAME):
        raise SignatureError("release file names must be plain names of [A-Za-z0-9_.-] (no folders, no leading dot)")


def _digest(content: bytes | Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    if isinstance(content, (bytes, bytearray)):
        digest.update(content)
        return digest.hexdigest(), len(content)
    size = 0
    with open(content, "rb") as fh:
        while True:
            block = fh.read(1 << 20)
            if not block:
                break
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    info.create_system = 3
    return info


def build_release_zip(
    dst_zip: Path | str,
    files: Mapping[str, bytes | Path | str],
    manifest: Mapping[str, Any],
    private_key: Ed25519PrivateKey,
) -> str:
    """Write the signed release zip; returns the sha256 of the canonical manifest bytes.

    ``manifest["files"]`` is computed here from ``files`` (name -> bytes or a path); a ``files``
    entry already in ``manifest`` must agree with it.
    """
    if not files:
        raise SignatureError("a release needs at least one file")
    entries: dict[str, dict[str, Any]] = {}
    contents: dict[str, bytes | Path] = {}
    for name, content in files.items():
        check_file_name(name)
        content = content if isinstance(content, (bytes, bytearray)) else Path(content)
        sha, size = _digest(content)
        entries[name] = {"sha256": sha, "size": size}
        contents[name] = content
    full = dict(manifest)
    if "files" in full and full["files"] != entries:
        raise SignatureError("manifest['files'] does not match the files given")
    full["files"] = entries
    manifest_bytes = canonical_json(full)
    signature = sign_bytes(manifest_bytes, private_key)
    dst_zip = Path(dst_zip)
    tmp = dst_zip.with_name(f".{dst_zip.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            for name in sorted(contents):
                content = contents[name]
                if isinstance(content, Path):
                    with open(content, "rb") as src, zf.open(_zip_info(name), "w", force_zip64=True) as out:
                        while True:
                            block = src.read(1 << 20)
                            if not block:
                                break
                            out.write(block)
                else:
                    zf.writestr(_zip_info(name), bytes(content))
            zf.writestr(_zip_info(MANIFEST_NAME), manifest_bytes)
            zf.writestr(_zip_info(SIGNATURE_NAME), signature + "\n")
        # a file that changed while it was zipped would not match its manifest entry
        with zipfile.ZipFile(tmp) as zf:
            for name, entry in entries.items():
                digest = hashlib.sha256()
                with zf.open(name) as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
                if digest.hexdigest() != entry["sha256"]:
                    raise SignatureError(f"{name} changed while the release was built")
        os.replace(tmp, dst_zip)
    finally:
        if tmp.exists():
            tmp.unlink()
    return hashlib.sha256(manifest_bytes).hexdigest()
