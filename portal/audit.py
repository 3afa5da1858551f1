"""The hash-chained audit log: append inside the caller's transaction, verify the whole chain.

hash(n) = SHA-256(prev_hash(n) || canonical JSON of event n's fields). Appending locks the single
chain-head row, so concurrent writers queue instead of forking the chain; the head also records
the last link, so deleting the newest events is detected too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone
from typing import Any, Iterator

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models, transaction
from django.db.models import F
from django.utils import timezone

from portal.models import AuditChainHead, AuditEvent, User

GENESIS_HASH = "0" * 64


class AuditError(RuntimeError):
    pass


def _normalise(payload: dict[str, Any]) -> dict[str, Any]:
    # Round-trip through JSON so the hash is computed over exactly what the database keeps.
    return json.loads(json.dumps(payload, cls=DjangoJSONEncoder, sort_keys=True))


def _canonical_time(value: datetime) -> str:
    return value.astimezone(dt_timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_digest(
    *,
    prev_hash: str,
    seq: int,
    created_at: datetime,
    actor_id: int | None,
    actor_label: str,
    verb: str,
    target_type: str,
    target_id: str,
    payload: dict[str, Any],
) -> str:
    body = {
        "seq": seq,
        "created_at": _canonical_time(created_at),
        "actor_id": actor_id,
        "actor_label": actor_label,
        "verb": verb,
        "target_type": target_type,
        "target_id": target_id,
        "payload": payload,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def _target_parts(target: models.Model | tuple[str, str] | None) -> tuple[str, str]:
    if target is None:
        return "", ""
    if isinstance(target, tuple):
        return target[0], str(target[1])
    return f"{target._meta.app_label}.{target._meta.model_name}", str(target.pk)


def record_event(
    *,
    actor: User | None,
    verb: str,
    target: models.Model | tuple[str, str] | None = None,
    payload: dict[str, Any] | None = None,
    actor_label: str | None = None,
) -> AuditEvent:
    """Append one event in the caller's transaction; the change and its event commit together."""
    if not connection.in_atomic_block:
        raise AuditError("record_event must run inside transaction.atomic() with the change it records.")
    target_type, target_id = _target_parts(target)
    label = actor_label or (actor.email if actor is not None else "system")
    payload = _normalise(payload or {})

    # UPDATE first: it takes the row lock (PostgreSQL) or the write lock (SQLite) before we read.
    updated = AuditChainHead.objects.filter(pk=1).update(seq=F("seq") + 1)
    if not updated:
        AuditChainHead.objects.get_or_create(pk=1, defaults={"seq": 0, "hash": GENESIS_HASH})
        AuditChainHead.objects.filter(pk=1).update(seq=F("seq") + 1)
    head = AuditChainHead.objects.get(pk=1)
    created_at = timezone.now()
    digest = event_digest(
        prev_hash=head.hash,
        seq=head.seq,
        created_at=created_at,
        actor_id=actor.pk if actor is not None else None,
        actor_label=label,
        verb=verb,
        target_type=target_type,
        target_id=target_id,
        payload=payload,
    )
    event = AuditEvent.objects.create(
        seq=head.seq,
        created_at=created_at,
        actor=actor,
        actor_label=label,
        verb=verb,
        target_type=target_type,
        target_id=target_id,
        payload=payload,
        prev_hash=head.hash,
        hash=digest,
    )
    AuditChainHead.objects.filter(pk=1).update(hash=digest)
    return event


def record_event_now(**kwargs: Any) -> AuditEvent:
    """For attempts that change nothing else (a refused download): its own small transaction."""
    with transaction.atomic():
        return record_event(**kwargs)


@dataclass(frozen=True)
class ChainBreak:
    seq: int | None
    reason: str

    def __str__(self) -> str:
        where = f"event #{self.seq}" if self.seq is not None else "the chain head"
        return f"{where}: {self.reason}"


def _events_in_order(batch_size: int = 2000) -> Iterator[AuditEvent]:
    return AuditEvent.objects.order_by("seq").iterator(chunk_size=batch_size)


def verify_chain() -> tuple[int, ChainBreak | None]:
    """Walk the chain from the first event. Returns (events checked, first break or None)."""
    expected_seq = 1
    prev_hash = GENESIS_HASH
    count = 0
    for event in _events_in_order():
        if event.seq != expected_seq:
            reason = "missing event(s) before it" if event.seq > expected_seq else "sequence out of order"
            return count, ChainBreak(event.seq, f"expected sequence number {expected_seq}; {reason}")
        if event.prev_hash != prev_hash:
            return count, ChainBreak(event.seq, "prev_hash does not match the hash of the event before it")
        recomputed = event_digest(
            prev_hash=event.prev_hash,
            seq=event.seq,
            created_at=event.created_at,
            actor_id=event.actor_id,
            actor_label=event.actor_label,
            verb=event.verb,
            target_type=event.target_type,
            target_id=event.target_id,
            payload=event.payload,
        )
        if recomputed != event.hash:
            return count, ChainBreak(event.seq, "its contents do not match its hash (the event was altered)")
        prev_hash = event.hash
        expected_seq += 1
        count += 1
    head = AuditChainHead.objects.filter(pk=1).first()
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
    if head_seq != count or head_hash != prev_hash:
        return count, ChainBreak(
            None, f"the head records event #{head_seq} but the chain ends at #{count} (events were removed)"
        )
    return count, None
