"""Caps and limits of the egress validator (one frozen dataclass, recorded in every report)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

MiB = 1024 * 1024
GiB = 1024 * MiB

#: dtypes a released adapter may use. Everything else (integers, F64, F8, bool, ...) is refused.
SUPPORTED_DTYPES = ("F32", "BF16", "F16")


@dataclass(frozen=True)
class ValidationPolicy:
    """Caps of the safetensors firewall. Defaults are sane for LoRA adapters up to a few GB.

    max_file_bytes       size cap of adapter_model.safetensors, checked with fstat before reading.
    max_header_bytes     cap of the JSON header length N (the reference loader allows 100 MB).
    max_name_length      cap of a tensor name, in characters ([A-Za-z0-9_.] only).
    max_tensors          cap of the number of tensors in the header.
    max_ndim             cap of the number of dimensions of one tensor.
    allowed_dtypes       subset of F32, BF16, F16.
    magnitude_bound      every value must satisfy |x| <= bound (and be finite).
    max_printable_run    longest run of printable ASCII bytes (or of UTF-16 printable characters)
                         tolerated inside tensor data. Trained float data has runs far below 32
                         (probability of a 32-byte run in a 512 MB F32 file is about 1e-5).
    min_identifier_length  identifier variants shorter than this (in characters) are not scanned
                         for (too many chance matches in float bytes); they are counted in the report.
    require_identifiers  when True (default), validating without an identifier list is a rejection.
    round_to_bf16        the release rewrite casts every tensor to BF16 (recorded in the result).
    chunk_bytes          read size of the streaming pass (memory is a small multiple of it).
    """

    max_file_bytes: int = 4 * GiB
    max_header_bytes: int = 1 * MiB
    max_name_length: int = 256
    max_tensors: int = 100_000
    max_ndim: int = 4
    allowed_dtypes: tuple[str, ...] = field(default=SUPPORTED_DTYPES)
    magnitude_bound: float = 1.0e3
    max_printable_run: int = 32
    min_identifier_length: int = 6
    require_identifiers: bool = True
    round_to_bf16: bool = False
    chunk_bytes: int = 1 * MiB

    def __post_init__(self) -> None:
        def _int(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"ValidationPolicy.{name} must be an integer >= {low}")

        _int("max_file_bytes", 8)
        _int("max_header_bytes", 2)
        _int("max_name_length", 1)
        _int("max_tensors", 1)
        _int("max_ndim", 1)
        _int("max_printable_run", 8)
        _int("min_identifier_length", 4)
        _int("chunk_bytes", 64 * 1024)
        if self.chunk_bytes % 8:
            raise ValueError("ValidationPolicy.chunk_bytes must be a multiple of 8")
        if not self.allowed_dtypes or any(d not in SUPPORTED_DTYPES for d in self.allowed_dtypes):
            raise ValueError(f"ValidationPolicy.allowed_dtypes must be a non-empty subset of {SUPPORTED_DTYPES}")
        bound = self.magnitude_bound
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not (0 < bound < 3.0e38):
            raise ValueError("ValidationPolicy.magnitude_bound must be a positive finite number")
        for name in ("require_identifiers", "round_to_bf16"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ValidationPolicy.{name} must be a bool")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["allowed_dtypes"] = list(self.allowed_dtypes)
        return data
