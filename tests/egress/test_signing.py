"""Signed release format and the sponsor's verifier (python -m egress.verify)."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from egress import signing
from egress.signing import (
    SignatureError,
    build_release_zip,
    canonical_json,
    generate_keypair,
    load_private_key,
    load_public_key,
    manifest_sha256,
    public_key_pem,
    sign_manifest,
    verify_manifest,
)
from egress.verify import VerificationError, main, verify_release

ROOT = Path(__file__).resolve().parents[2]

FILES = {
    "adapter_model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(40)),
    "adapter_config.json": b'{"r":8}',
    "README.md": b"# card\n",
}
MANIFEST = {"release": "r-0001", "organisation": "Sponsor Ltd", "base_model": "rapha/llama-tiny"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    private = generate_keypair(folder / "signing.pem", folder / "public.pem")
    return private, folder / "public.pem", folder / "signing.pem"


@pytest.fixture
def release(tmp_path, keys):
    private, public_path, _ = keys
    path = tmp_path / "release.zip"
    digest = build_release_zip(path, FILES, MANIFEST, private)
    return path, public_path, digest


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def _rezip(path: Path, entries: dict[str, bytes] | list[tuple[str, bytes]]) -> None:
    items = entries.items() if isinstance(entries, dict) else entries
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in items:
            zf.writestr(name, content)


def _fails(path: Path, public_path: Path) -> bool:
    try:
        verify_release(path, public_path)
    except (VerificationError, SignatureError):
        return True
    return False


# ---------------------------------------------------------------------------------------------
# signing primitives


def test_canonical_json_sorted_compact_utf8():
    assert canonical_json({"b": 1, "a": {"é": [1, 2]}}) == '{"a":{"é":[1,2]},"b":1}'.encode("utf-8")
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_sign_verify_roundtrip_and_tamper(keys):
    private, public_path, _ = keys
    signature = sign_manifest(MANIFEST, private)
    public = load_public_key(public_path)
    verify_manifest(MANIFEST, signature, public)
    with pytest.raises(SignatureError):
        verify_manifest({**MANIFEST, "release": "r-0002"}, signature, public)
    other = load_public_key(public_key_pem(signing.generate_private_key()))
    with pytest.raises(SignatureError):
        verify_manifest(MANIFEST, signature, other)
    raw = bytearray(base64.b64decode(signature))
    raw[0] ^= 1
    with pytest.raises(SignatureError):
        verify_manifest(MANIFEST, base64.b64encode(bytes(raw)).decode(), public)


def test_keypair_private_file_mode_0600(keys, tmp_path):
    _, public_path, private_path = keys
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert public_path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert load_private_key(private_path).public_key() is not None
    with pytest.raises(FileExistsError):
        generate_keypair(private_path)


def test_load_public_key_refuses_other_key_types(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(SignatureError):
        load_public_key(pem)
    with pytest.raises(SignatureError):
        load_public_key(b"not a key")


# ---------------------------------------------------------------------------------------------
# release zip


def test_release_zip_layout_and_manifest(release):
    path, public_path, digest = release
    entries = _entries(path)
    assert set(entries) == set(FILES) | {"manifest.json", "manifest.sig"}
    manifest = json.loads(entries["manifest.json"])
    assert manifest["release"] == "r-0001"
    assert manifest["files"]["README.md"] == {"sha256": __import__("hashlib").sha256(FILES["README.md"]).hexdigest(), "size": len(FILES["README.md"])}
    assert entries["manifest.json"] == canonical_json(manifest)
    assert digest == manifest_sha256(manifest)
    result = verify_release(path, public_path)
    assert result.manifest_sha256 == digest and set(result.files) == set(FILES)


def test_release_zip_from_paths(tmp_path, keys):
    private, public_path, _ = keys
    big = tmp_path / "adapter_model.safetensors"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    path = tmp_path / "r.zip"
    build_release_zip(path, {"adapter_model.safetensors": big, "README.md": b"x"}, MANIFEST, private)
    assert verify_release(path, public_path).files["adapter_model.safetensors"]["size"] == big.stat().st_size


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "manifest.json", "", "x\x00"])
def test_release_zip_bad_names_refused(tmp_path, keys, name):
    with pytest.raises(SignatureError):
        build_release_zip(tmp_path / "r.zip", {name: b"x"}, MANIFEST, keys[0])


def test_release_zip_conflicting_files_map_refused(tmp_path, keys):
    with pytest.raises(SignatureError):
        build_release_zip(tmp_path / "r.zip", FILES, {**MANIFEST, "files": {"README.md": {"sha256": "0" * 64, "size": 1}}}, keys[0])


def test_verify_any_changed_byte_of_released_file_fails(release):
    path, public_path, _ = release
    entries = _entries(path)
    for name in FILES:
        content = entries[name]
        for position in range(len(content)):
            changed = bytearray(content)
            changed[position] ^= 0x01
            _rezip(path, {**entries, name: bytes(changed)})
            assert _fails(path, public_path), (name, position)
        _rezip(path, {**entries, name: content + b"\0"})
        assert _fails(path, public_path)
        _rezip(path, {**entries, name: content[:-1]})
        assert _fails(path, public_path)


def test_verify_any_changed_byte_of_manifest_fails(release):
    path, public_path, _ = release
    entries = _entries(path)
    for target in ("manifest.json", "manifest.sig"):
        content = entries[target]
        for position in range(len(content)):
            for flip in (0x01, 0x20):
                changed = bytearray(content)
                changed[position] ^= flip
                _rezip(path, {**entries, target: bytes(changed)})
                assert _fails(path, public_path), (target, position, flip)


def test_verify_resigned_noncanonical_manifest_fails(tmp_path, keys):
    private, public_path, _ = keys
    path = tmp_path / "r.zip"
    build_release_zip(path, FILES, MANIFEST, private)
    entries = _entries(path)
    pretty = json.dumps(json.loads(entries["manifest.json"]), indent=1).encode()
    entries["manifest.json"] = pretty
    entries["manifest.sig"] = (base64.b64encode(private.sign(pretty)).decode() + "\n").encode()
    _rezip(path, entries)
    with pytest.raises(SignatureError, match="canonical"):
        verify_release(path, public_path)


def test_verify_extra_file_fails(release):
    path, public_path, _ = release
    _rezip(path, {**_entries(path), "notes.txt": b"hello"})
    with pytest.raises(VerificationError, match="exactly"):
        verify_release(path, public_path)


def test_verify_missing_file_fails(release):
    path, public_path, _ = release
    entries = _entries(path)
    del entries["README.md"]
    _rezip(path, entries)
    with pytest.raises(VerificationError, match="README.md"):
        verify_release(path, public_path)


def test_verify_duplicate_name_fails(release):
    path, public_path, _ = release
    entries = _entries(path)
    with pytest.warns(UserWarning):
        _rezip(path, list(entries.items()) + [("README.md", b"other")])
    with pytest.raises(VerificationError, match="same name"):
        verify_release(path, public_path)


@pytest.mark.parametrize("name", ["../README.md", "/etc/x", "sub/README.md", ".README.md", "sub/"])
def test_verify_path_tricks_fail(release, name):
    path, public_path, _ = release
    _rezip(path, {**_entries(path), name: b"x"})
    assert _fails(path, public_path)


def test_verify_symlink_entry_fails(release):
    path, public_path, _ = release
    entries = _entries(path)
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in entries.items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = ((stat.S_IFLNK | 0o777) if name == "README.md" else (stat.S_IFREG | 0o644)) << 16
            zf.writestr(info, content)
    with pytest.raises(VerificationError, match="link"):
        verify_release(path, public_path)


def test_verify_prefixed_zip_fails(release):
    path, public_path, _ = release
    path.write_bytes(b"MZ" + b"\0" * 62 + path.read_bytes())
    assert _fails(path, public_path)


def test_verify_wrong_key_fails(release, tmp_path):
    path, _, _ = release
    other = tmp_path / "other.pem"
    other.write_bytes(public_key_pem(signing.generate_private_key()))
    with pytest.raises(SignatureError):
        verify_release(path, other)


def test_verify_not_a_zip_fails(tmp_path, keys):
    path = tmp_path / "r.zip"
    path.write_bytes(b"not a zip")
    with pytest.raises(VerificationError):
        verify_release(path, keys[1])


# ---------------------------------------------------------------------------------------------
# the command


def test_verify_main_exit_codes(release, capsys):
    path, public_path, digest = release
    assert main([str(path), "--public-key", str(public_path)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and digest in out and "adapter_model.safetensors" in out and "r-0001" in out
    entries = _entries(path)
    _rezip(path, {**entries, "README.md": b"# card!\n"})
    assert main([str(path), "--public-key", str(public_path)]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_verify_module_runs_without_django(release):
    path, public_path, _ = release
    code = (
        "import sys, runpy\n"
        "sys.argv = ['egress.verify', sys.argv[1], '--public-key', sys.argv[2]]\n"
        "try:\n"
        "    runpy.run_module('egress.verify', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert 'django' not in sys.modules, 'django imported'\n"
        "    raise\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run([sys.executable, "-c", code, str(path), str(public_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "egress.verify", str(path), "--public-key", str(path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "FAILED" in done.stdout
