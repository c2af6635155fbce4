"""What the custodian keeps and alerts about, by its own clock (custodian/policy.py)."""

from __future__ import annotations

from lafs_backup.custodian.policy import DAY, Leases, Level, Rules, due, kept, leases, report
from lafs_backup.custodian.rotation import END, Span, paint
from lafs_backup.custodian.state import Complete, Forget, Pass, Seen, State

RULES = Rules(keep_within=90 * DAY, grace=30 * DAY, quiet_alert=3 * DAY, renew_every=7 * DAY, lease=31 * DAY,
              behind=7 * DAY)


def seen(n: int, at: float, **kw) -> Seen:
    return Seen("0123456789abcdef", f"20260101T000000.000000Z.g{n}", f"URI:CHK:m{n}", 100, at, **kw)


def fresh_pass(at: float, **kw) -> Pass:
    return Pass(at, at + 1, 1, 10, 10, 30, **kw)


def renewed_all(at: float, backups: list[Seen], **kw) -> State:
    """A state whose every backup joined and was renewed whole at ``at`` (a full pass)."""
    for b in backups:
        b.joined, b.span = at, ["00" * 16, "ff" * 16]
    return State({b.key: b for b in backups}, last_new=at, started=at, last_pass=fresh_pass(at),
                 spans=[Span(END, at)], complete=Complete(at, at + 1, "pass"), **kw)


def test_kept_by_first_seen_time_never_by_count():
    now = 1000 * DAY
    s = State({b.key: b for b in [seen(1, now - 100 * DAY), seen(2, now - 89 * DAY), seen(3, now - DAY),
                                   seen(4, now, forgotten=now), seen(5, now, refused="junk")]})
    assert [b.record[-2:] for b in kept(s, now, RULES)] == ["g2", "g3"]
    # Ten more (fakes, say) push nothing out.
    s.backups.update({b.key: b for b in (seen(10 + i, now) for i in range(10))})
    assert len(kept(s, now, RULES)) == 12
    assert len(kept(s, now, Rules(keep_within=None))) == 13


def test_a_forget_waits_for_its_grace_period_and_alerts_meanwhile():
    now = 1000 * DAY
    b = seen(1, now - 5 * DAY)
    f = Forget(b.folder, b.record, now)
    s = renewed_all(now, [b])
    s.forgets = {f.key: f}
    r = report(s, now, RULES)
    assert r.level is Level.WARNING and [a.topic for a in r.alerts] == ["forget"] and b.key in r.alerts[0].message
    assert [p.key for p in r.pending] == [b.key] and [k.key for k in r.kept] == [b.key]
    assert due(s, now + 30 * DAY - 1, RULES) == [] and due(s, now + 30 * DAY, RULES) == [f]


def test_alerts():
    now = 1000 * DAY
    gone = seen(1, now - DAY, vanished=now)
    s = renewed_all(now - 11 * DAY, [gone], short=["a"], lost=["b"], unanswered=2)
    s.last_new, s.started = now - 4 * DAY, now - 20 * DAY
    r = report(s, now, RULES)
    topics = {(a.topic, a.level) for a in r.alerts}
    assert {("vanished", Level.CRITICAL), ("quiet", Level.WARNING), ("renewal", Level.WARNING),
            ("shares", Level.CRITICAL), ("shares", Level.WARNING), ("servers", Level.WARNING)} == topics
    assert r.level is Level.CRITICAL and r.json()["code"] == 2
    calm = renewed_all(now, [seen(2, now)])
    assert report(calm, now, RULES).level is Level.OK


def test_each_kept_backups_leases_and_the_alert_when_renewal_falls_behind():
    """Renewal times are per range of storage indexes: a backup's earliest expiry is its oldest range's
    renewal plus the lease period; an alert when it comes within ``behind`` of now."""
    t0 = 1000 * DAY
    low, wide, empty = seen(1, t0), seen(2, t0), seen(3, t0)
    s = renewed_all(t0, [low, wide, empty])
    low.span = ["00" * 16, "10" + "00" * 15]           # its objects in the first sixteenth
    empty.span = None                                  # it references no object
    # Days go by: a round of the rotation renews the first seventh of the space each day.
    for day in (1, 2):
        s.spans = list(paint(s.spans, (day - 1) * END // 7, day * END // 7, t0 + day * DAY))
    assert leases(low, s, RULES) == Leases(t0 + DAY, t0 + DAY + 31 * DAY)
    assert leases(wide, s, RULES) == Leases(t0, t0 + 31 * DAY)  # (its highest index: renewed by the pass)
    assert leases(empty, s, RULES) == Leases(t0, None)
    # A new backup that has not joined: nothing renewed yet; once its new objects were renewed it has.
    late = seen(4, t0 + 2 * DAY)
    s.backups[late.key] = late
    assert leases(late, s, RULES) == Leases(None, None)
    late.joined, late.span = t0 + 2 * DAY, ["00" * 16, "ff" * 16]
    assert leases(late, s, RULES) == Leases(t0 + 2 * DAY, t0 + 31 * DAY)
    r = report(s, t0 + 2 * DAY, RULES)
    assert r.level is Level.OK and r.leases == tuple(leases(b, s, RULES) for b in r.kept)
    js = r.json()
    assert {k["backup"]: (k["renewed"], k["expires"]) for k in js["kept"]}[low.key] == (t0 + DAY, t0 + 32 * DAY)
    assert js["renewal"]["expires"] == t0 + 31 * DAY and js["renewal"]["complete"]["by"] == "pass"
    # The custodian stops renewing: a warning past 1.5 rounds, critical within 7 days of the first expiry.
    r = report(s, t0 + 11 * DAY, RULES)
    assert {(a.topic, a.level) for a in r.alerts} == {("renewal", Level.WARNING), ("quiet", Level.WARNING)}
    r = report(s, t0 + 24 * DAY + 1, RULES)
    alert, = (a for a in r.alerts if a.topic == "renewal")
    assert alert.level is Level.CRITICAL and wide.key in alert.message and late.key in alert.message
    assert low.key not in alert.message and empty.key not in alert.message
    # A backup never renewed counts from when it was first seen.
    stuck = seen(5, t0 - 30 * DAY)
    s.backups[stuck.key] = stuck
    alert, = (a for a in report(s, t0 + 2 * DAY, RULES).alerts if a.topic == "renewal")
    assert alert.level is Level.CRITICAL and stuck.key in alert.message and wide.key not in alert.message
