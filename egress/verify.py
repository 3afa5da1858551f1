"""The sponsor's verifier: ``python -m egress.verify RELEASE.zip --public-key KEY.pem``.

Needs no Django (imports only egress.signing and the standard library). Checks, in order:

1. the zip is readable, has no comment, no encrypted entry, no folder, link or path trick, no
   duplicate name, and only stored or deflated entries;
2. ``manifest.json`` is canonical JSON and ``manifest.sig`` is a valid Ed25519 signature of its
   exact bytes by the given public key;
3. the zip holds exactly the manifest's files plus manifest.json and manifest.sig;
4. every file's size and sha256 match the manifest (read streaming, never past the stated size).

Exit status 0 when everything verified, 1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import stat
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from egress.signing import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    SignatureError,
    check_file_name,
    load_public_key,
    parse_canonical_manifest,
    public_key_fingerprint,
    verify_bytes,
)

_MAX_MANIFEST_BYTES = 1 << 20
_MAX_SIGNATURE_BYTES = 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


class VerificationError(Exception):
    pass


@dataclass
class VerifiedRelease:
    manifest: dict[str, Any]
    manifest_sha256: str
    key_fingerprint: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)


def _read_limited(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.file_size > limit:
        raise VerificationError(f"{info.filename} is larger than {limit} bytes")
    with zf.open(info) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise VerificationError(f"{info.filename} is larger than {limit} bytes")
    return data


def _check_entries(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    if zf.comment:
        raise VerificationError("the zip has a comment")
    infos = zf.infolist()
    by_name: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        if name in by_name:
            raise VerificationError("the zip holds two entries with the same name")
        if name not in (MANIFEST_NAME, SIGNATURE_NAME):
            try:
                check_file_name(name)
            except SignatureError:
                raise VerificationError("the zip holds an entry whose name is a path, hidden or unsafe") from None
        if info.is_dir():
            raise VerificationError("the zip holds a folder")
        if info.flag_bits & 0x1:
            raise VerificationError("the zip holds an encrypted entry")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise VerificationError("the zip uses an unsupported compression method")
        file_type = stat.S_IFMT(info.external_attr >> 16)
        if info.create_system == 3 and file_type not in (0, stat.S_IFREG):
            raise VerificationError("the zip holds a link or special file")
        by_name[name] = info
    if infos and infos[0].header_offset != 0:
        raise VerificationError("the zip has data before its first entry")
    return by_name


def verify_release(zip_path: Path | str, public_key_path: Path | str | bytes) -> VerifiedRelease:
    """Verify a release zip; raises VerificationError (or SignatureError) with the reason."""
    public_key = load_public_key(public_key_path)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise VerificationError(f"not a readable zip file ({type(exc).__name__})") from None
    with zf:
        try:
            entries = _check_entries(zf)
            if MANIFEST_NAME not in entries or SIGNATURE_NAME not in entries:
                raise VerificationError("the zip lacks manifest.json or manifest.sig")
            manifest_bytes = _read_limited(zf, entries[MANIFEST_NAME], _MAX_MANIFEST_BYTES)
            signature = _read_limited(zf, entries[SIGNATURE_NAME], _MAX_SIGNATURE_BYTES)
            verify_bytes(manifest_bytes, signature, public_key)
            manifest = parse_canonical_manifest(manifest_bytes)
            files = manifest.get("files")
            if not isinstance(files, dict) or not files:
                raise VerificationError("the manifest has no 'files' map")
            for name, entry in files.items():
                check_file_name(name)
                if not (
                    isinstance(entry, dict)
                    and set(entry) == {"sha256", "size"}
                    and isinstance(entry["sha256"], str)
                    and _HEX64.fullmatch(entry["sha256"])
                    and type(entry["size"]) is int
                    and entry["size"] >= 0
                ):
                    raise VerificationError("a manifest file entry is not {sha256, size}")
            expected_names = set(files) | {MANIFEST_NAME, SIGNATURE_NAME}
            if set(entries) != expected_names:
                extra = len(set(entries) - expected_names)
                missing = sorted(expected_names - set(entries))
                raise VerificationError(
                    f"the zip does not hold exactly the manifest's files ({extra} extra, missing: {', '.join(missing) or 'none'})"
                )
            for name, entry in sorted(files.items()):
                info = entries[name]
                if info.file_size != entry["size"]:
                    raise VerificationError(f"{name}: size {info.file_size} differs from the manifest's {entry['size']}")
                digest = hashlib.sha256()
                size = 0
                with zf.open(info) as fh:
                    while True:
                        block = fh.read(1 << 20)
                        if not block:
                            break
                        size += len(block)
                        if size > entry["size"]:
                            raise VerificationError(f"{name} is longer than the manifest says")
                        digest.update(block)
                if size != entry["size"]:
                    raise VerificationError(f"{name}: size {size} differs from the manifest's {entry['size']}")
                if digest.hexdigest() != entry["sha256"]:
                    raise VerificationError(f"{name}: sha256 differs from the manifest")
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            if isinstance(exc, (SignatureError, VerificationError)):
                raise
            raise VerificationError(f"the zip is damaged ({type(exc).__name__})") from None
    return VerifiedRelease(
        manifest=manifest,
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
        key_fingerprint=public_key_fingerprint(public_key),
        files={name: dict(entry) for name, entry in sorted(files.items())},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egress.verify", description="Verify a signed Rapha adapter release.")
    parser.add_argument("release", help="the release zip")
    parser.add_argument("--public-key", required=True, help="the portal's Ed25519 public key (PEM)")
    args = parser.parse_args(argv)
    try:
        result = verify_release(args.release, args.public_key)
    except (VerificationError, SignatureError, OSError) as exc:
        reason = str(exc) if not isinstance(exc, OSError) else f"cannot read a file ({exc.strerror or type(exc).__name__})"
        print(f"FAILED: {reason}")
        return 1
    print(f"OK: {args.release}")
    print(f"signature: Ed25519, valid for public key sha256:{result.key_fingerprint}")
    print(f"manifest sha256: {result.manifest_sha256}")
    for key in sorted(result.manifest):
        if key != "files":
            value = result.manifest[key]
            text = value if isinstance(value, str) else repr(value)
            print(f"manifest {key}: {text}")
    for name, entry in result.files.items():
        print(f"file {name}: {entry['size']} bytes, sha256 {entry['sha256']} (matches)")
    print("the zip holds exactly these files plus manifest.json and manifest.sig")
    return 0


if __name__ == "__main__":
    sys.exit(main())
