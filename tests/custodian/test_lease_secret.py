"""The custodian's lease secret (custodian/secrets.py, custodian/secretfile.py): derived as Tahoe derives
it, kept 0600, never shown."""

from __future__ import annotations

import os
import stat

import pytest
from allmydata.client import SecretHolder
from allmydata.util import hashutil
from hypothesis import given
from hypothesis import strategies as st

from lafs_backup.custodian.secretfile import create_secret_file, read_secret_file
from lafs_backup.custodian.secrets import LeaseSecret, LeaseSecretError, decode_secret, encode_secret


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16), st.binary(min_size=20, max_size=20))
def test_the_secrets_are_tahoes(secret, si, seed):
    # What a Tahoe client holding ``secret`` as its lease secret sends that server for that object
    # (allmydata.immutable.checker and allmydata.mutable.filenode derive it so).
    holder = SecretHolder(secret, b"")
    renew = hashutil.bucket_renewal_secret_hash(
        hashutil.file_renewal_secret_hash(holder.get_renewal_secret(), si), seed)
    cancel = hashutil.bucket_cancel_secret_hash(
        hashutil.file_cancel_secret_hash(holder.get_cancel_secret(), si), seed)
    b = LeaseSecret(secret).for_server(si, seed)
    assert (b.renew, b.cancel) == (renew, cancel)
    assert decode_secret(encode_secret(secret), "f") == secret


def test_secrets_differ_by_object_and_server():
    s = LeaseSecret(os.urandom(32))
    si, seed = os.urandom(16), os.urandom(20)
    a = s.for_server(si, seed)
    assert a.renew != a.cancel
    assert s.for_server(os.urandom(16), seed).renew != a.renew
    assert s.for_server(si, os.urandom(20)).renew != a.renew
    assert LeaseSecret(os.urandom(32)).for_server(si, seed).renew != a.renew


def test_nothing_shows_a_secret():
    raw = os.urandom(32)
    s = LeaseSecret(raw)
    b = s.for_server(os.urandom(16), os.urandom(20))
    for shown in (repr(s), str(s), repr(b), str(b)):
        assert raw.hex() not in shown and b.renew.hex() not in shown and repr(b.renew) not in shown


def test_the_file_is_made_once_and_private(tmp_path):
    path = str(tmp_path / "lease.secret")
    old = os.umask(0o022)
    try:
        made = create_secret_file(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    read = read_secret_file(path)
    si, seed = os.urandom(16), os.urandom(20)
    assert read.for_server(si, seed) == made.for_server(si, seed)
    with pytest.raises(LeaseSecretError, match="never replaced"):
        create_secret_file(path)
    assert read_secret_file(path).for_server(si, seed) == made.for_server(si, seed)


def test_a_file_others_may_read_is_refused(tmp_path):
    path = str(tmp_path / "lease.secret")
    create_secret_file(path)
    os.chmod(path, 0o640)
    with pytest.raises(LeaseSecretError, match="chmod 600"):
        read_secret_file(path)


@pytest.mark.parametrize("text", ["", "not base32 at all!", encode_secret(b"x" * 16)])
def test_a_file_without_a_secret_is_refused_without_showing_it(tmp_path, text):
    path = tmp_path / "lease.secret"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(LeaseSecretError) as e:
        read_secret_file(str(path))
    assert str(path) in str(e.value) and (not text.strip() or text.strip() not in str(e.value))


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(LeaseSecretError, match="No such file"):
        read_secret_file(str(tmp_path / "none"))
