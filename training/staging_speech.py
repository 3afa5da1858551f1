"""Speech stager: the recording as ``audio/<alias>.wav`` and its transcript, identifiers redacted.

The importer stored each recording as a 16 kHz mono PCM16 WAV (``Record.attributes``
``attachment_path`` / ``attachment_sha256``); staging copies those bytes under the job's pseudonym,
after checking them against the sha256 recorded at import, so a file changed on disk since then
never reaches a job. The transcript is the record's text with the patient's direct identifiers
replaced (``StageItem.text``). A record without a recording is declined (counted, not staged).
"""

from __future__ import annotations

import hashlib

from training.staging import StageItem, register_stager


@register_stager("speech")
def stage_speech(item: StageItem) -> dict | None:
    attributes = item.record.attributes or {}
    relative = attributes.get("attachment_path")
    if not relative:
        return None
    data = item.source(relative).read_bytes()
    if hashlib.sha256(data).hexdigest() != attributes.get("attachment_sha256"):
        raise ValueError(f"Record {item.record.pk}: its recording does not match the sha256 registered at import.")
    target = item.data_dir / "audio" / f"{item.alias}.wav"
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(data)
    return {"audio": f"audio/{item.alias}.wav", "text": item.text()}
