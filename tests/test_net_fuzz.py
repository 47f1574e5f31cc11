"""Network fuzzing in CI (issue 13, item 5): a few hundred recorded sessions replayed mutated
into the destination over real sockets (and some into a real ``qatmig listen``): no crash, no
traceback, no hang, no ``completed`` with wrong RAM after a mutation the wire can reveal. The
soak (>= 10,000 cases) is ``benchmarks/net_fuzz.py``; its table is in docs/reliability.md."""

from __future__ import annotations

import pytest
from qatmig_engine import netfuzz as nf

CHUNKS = 8
PER_CHUNK = 30  # 240 cases in all
LISTEN_EVERY = 30  # one case per chunk into a qatmig listen subprocess


@pytest.fixture(scope="module")
def sessions():
    return nf.load_sessions()


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_mutated_sessions_never_crash_hang_or_complete_wrong(sessions, chunk, tmp_path):
    seeds = range(10_000 + chunk * PER_CHUNK, 10_000 + (chunk + 1) * PER_CHUNK)
    results = []
    for seed in seeds:
        sess, case = nf.make_case(sessions, seed)
        if seed % LISTEN_EVERY == 0:
            results.append(nf.run_case_listen(sess, case, tmp_path, timeout=1.0))
        else:
            results.append(nf.run_case(sess, case, timeout=1.0))
    summary = nf.summarize(results)
    assert not summary["bugs"], summary["bugs"]
    assert summary["outcomes"]["failed"] > PER_CHUNK // 3  # the mutations do reach checks


def test_every_mutation_kind_is_exercised(sessions):
    seen = set()
    for seed in range(400):
        _, case = nf.make_case(sessions, seed)
        seen.update(m.split("-header-")[0] if "-header-" in m else m for m in case.mutations)
    assert {"flip-payload", "flip", "flip-init", "flip-main", "repeat-packet", "drop-packet",
            "swap-packets", "move-offset", "packet-num", "truncate", "insert-bytes",
            "reorder-connections", "drop-connection"} <= seen


def test_a_detectable_mutation_that_completes_wrong_is_reported(sessions):
    """The classifier can fail: a case without unchecked bytes that completes with other RAM
    is a bug (here faked by claiming the session's RAM had another digest)."""
    sess, case = nf.make_case(sessions, 3)
    case.undetectable_only = False
    fake = nf.Session(sess.name, sess.dialect, sess.method, sess.blobs, sess.ram_bytes,
                      sess.ramblock, "0" * 64)
    case.blobs = list(sess.blobs)  # unmutated: completes, but not with the faked digest
    r = nf.run_case(fake, case, timeout=1.0)
    assert r.outcome == "completed-wrong"
