from __future__ import annotations

import threading

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from portal.audit import AuditError, record_event, verify_chain
from portal.models import AuditEvent
from tests.conftest import on_postgres


def _append(n: int, verb: str = "test.event") -> list[AuditEvent]:
    events = []
    for i in range(n):
        with transaction.atomic():
            events.append(record_event(actor=None, verb=verb, target=("test.thing", str(i)), payload={"i": i, "note": "é"}))
    return events


@pytest.mark.django_db
def test_verify_chain_intact_after_appends():
    _append(5)
    checked, broken = verify_chain()
    assert (checked, broken) == (5, None)


@pytest.mark.django_db(transaction=True)
def test_record_event_outside_transaction_refused():
    with pytest.raises(AuditError):
        record_event(actor=None, verb="x")


@pytest.mark.django_db
def test_record_event_rolls_back_with_the_change():
    _append(1)
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            record_event(actor=None, verb="doomed")
            raise RuntimeError("the change failed")
    assert list(AuditEvent.objects.values_list("verb", flat=True)) == ["test.event"]
    assert verify_chain() == (1, None)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "field,value",
    [
        ("verb", "tampered"),
        ("actor_label", "mallory@example.org"),
        ("target_type", "other.thing"),
        ("target_id", "999"),
        ("payload", {"i": 2, "note": "changed"}),
        ("created_at", None),
        ("prev_hash", "f" * 64),
        ("hash", "e" * 64),
        ("seq", 99),
    ],
)
def test_verify_chain_detects_changed_field(field, value):
    events = _append(4)
    if field == "created_at":
        from datetime import timedelta

        value = events[2].created_at + timedelta(seconds=1)
    AuditEvent.objects.filter(pk=events[2].pk).update(**{field: value})
    checked, broken = verify_chain()
    assert broken is not None
    assert broken.seq in {3, 4, 99}
    assert checked == 2


@pytest.mark.django_db
def test_verify_chain_detects_deleted_event():
    events = _append(4)
    AuditEvent.objects.filter(pk=events[1].pk).delete()
    checked, broken = verify_chain()
    assert (checked, broken.seq) == (1, 3)
    assert "missing" in broken.reason


@pytest.mark.django_db
def test_verify_chain_detects_deleted_last_event():
    events = _append(3)
    AuditEvent.objects.filter(pk=events[2].pk).delete()
    checked, broken = verify_chain()
    assert checked == 2 and broken.seq is None
    assert "removed" in broken.reason


@pytest.mark.django_db
def test_verify_chain_detects_inserted_event():
    """A forger who computes a valid hash for the inserted event is still caught by the next link."""
    from django.db.models import F

    from portal.audit import event_digest

    events = _append(3)
    AuditEvent.objects.filter(seq__gte=2).update(seq=F("seq") + 1000)
    AuditEvent.objects.filter(seq__gte=1000).update(seq=F("seq") - 999)
    fields = dict(seq=2, created_at=events[0].created_at, actor_id=None, actor_label="mallory",
                  verb="forged", target_type="", target_id="", payload={})
    AuditEvent.objects.create(
        **{k: v for k, v in fields.items() if k != "actor_id"},
        prev_hash=events[0].hash, hash=event_digest(prev_hash=events[0].hash, **fields),
    )
    checked, broken = verify_chain()
    assert (checked, broken.seq) == (2, 3)
    assert "prev_hash" in broken.reason


@pytest.mark.django_db
def test_verify_chain_detects_reordered_events():
    events = _append(4)
    a, b = events[1], events[2]
    AuditEvent.objects.filter(pk=a.pk).update(seq=-1)
    AuditEvent.objects.filter(pk=b.pk).update(seq=a.seq)
    AuditEvent.objects.filter(pk=a.pk).update(seq=b.seq)
    checked, broken = verify_chain()
    assert (checked, broken.seq) == (1, 2)


@pytest.mark.django_db
def test_verify_audit_chain_command_exit_codes(capsys):
    events = _append(3)
    call_command("verify_audit_chain")
    assert "3 events verified" in capsys.readouterr().out
    AuditEvent.objects.filter(pk=events[1].pk).update(verb="edited")
    with pytest.raises(SystemExit) as exit_info:
        from django.core.management import execute_from_command_line

        execute_from_command_line(["manage.py", "verify_audit_chain"])
    assert exit_info.value.code == 1
    assert "event #2" in capsys.readouterr().err


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_record_event_concurrent_writers_never_fork_chain():
    if not on_postgres():
        pytest.skip("needs PostgreSQL (set DATABASE_URL) to test concurrent writers")
    writers, per_writer = 8, 15
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            barrier.wait()
            for i in range(per_writer):
                with transaction.atomic():
                    record_event(actor=None, verb="concurrent", payload={"worker": worker, "i": i})
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert verify_chain() == (writers * per_writer, None)
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == list(range(1, writers * per_writer + 1))
