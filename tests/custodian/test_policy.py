"""What the custodian keeps and alerts about, by its own clock (custodian/policy.py)."""

from __future__ import annotations

from lafs_backup.custodian.policy import DAY, Level, Rules, due, kept, pass_due, report
from lafs_backup.custodian.state import Forget, Pass, Seen, State

RULES = Rules(keep_within=90 * DAY, grace=30 * DAY, quiet_alert=3 * DAY, renew_every=7 * DAY, lease=31 * DAY)


def seen(n: int, at: float, **kw) -> Seen:
    return Seen("0123456789abcdef", f"20260101T000000.000000Z.g{n}", f"URI:CHK:m{n}", 100, at, **kw)


def fresh_pass(at: float, **kw) -> Pass:
    return Pass(at, at + 1, 1, 10, 10, 30, **kw)


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
    s = State({b.key: b}, {f.key: f}, last_new=now, started=now - 5 * DAY, last_pass=fresh_pass(now))
    r = report(s, now, RULES)
    assert r.level is Level.WARNING and [a.topic for a in r.alerts] == ["forget"] and b.key in r.alerts[0].message
    assert [p.key for p in r.pending] == [b.key] and [k.key for k in r.kept] == [b.key]
    assert due(s, now + 30 * DAY - 1, RULES) == [] and due(s, now + 30 * DAY, RULES) == [f]


def test_alerts():
    now = 1000 * DAY
    gone = seen(1, now - DAY, vanished=now)
    s = State({gone.key: gone}, last_new=now - 4 * DAY, started=now - 20 * DAY,
              last_pass=fresh_pass(now - 11 * DAY, short=["a"], lost=["b"], unanswered=2))
    r = report(s, now, RULES)
    topics = {(a.topic, a.level) for a in r.alerts}
    assert {("vanished", Level.CRITICAL), ("quiet", Level.WARNING), ("renewal", Level.WARNING),
            ("shares", Level.CRITICAL), ("shares", Level.WARNING), ("servers", Level.WARNING)} == topics
    assert r.level is Level.CRITICAL and r.json()["code"] == 2
    s.last_pass = fresh_pass(now - 25 * DAY)
    assert ("renewal", Level.CRITICAL) in {(a.topic, a.level) for a in report(s, now, RULES).alerts}
    assert pass_due(s, now, RULES) and not pass_due(State(last_pass=fresh_pass(now - DAY)), now, RULES)
    calm = State({seen(2, now).key: seen(2, now)}, last_new=now, started=now, last_pass=fresh_pass(now))
    assert report(calm, now, RULES).level is Level.OK
