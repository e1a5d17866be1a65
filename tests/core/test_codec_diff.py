"""The C codec's whole output on the seeded streams of ``codec_diff.py``
(recorded traffic, fuzz seeds, mutations, structured random messages) is
locked to one hash, recorded before check() became one loop.  A change to
the codec that is meant to keep its behaviour must keep this hash; a change
that means to alter a decision or an error text updates it (find the cases
that moved with ``codec_diff.py record`` on both builds, then ``compare``)."""

from codec_diff import record

# 1488 cases, 114290 messages, at commit f8cd4e2's codec
TOTAL = "e0168266a2cc241fc093e8018e06efcb2e9b3e786fd88dbaa58dce3e84074bb5"


def test_codec_output_unchanged():
    out = record(scale=1)
    assert out["cases"] == 1488
    assert out["total"] == TOTAL
