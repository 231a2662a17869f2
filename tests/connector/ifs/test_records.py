"""IFS records and ETags, against the real payloads in the shared IFS samples."""

from __future__ import annotations

import pytest

from connector.ifs.records import IfsRecord, make_etag, parse_etag

# From specs/ifs/README.md (a captured IFS Cloud payload).
REAL_ETAG = 'W/"Vy8iQUFBWkkyQUFoQUFBNXZUQUFBOjIwMjUxMDA4MTcxNjEwIg=="'


def test_parse_a_real_ifs_etag():
    assert parse_etag(REAL_ETAG) == ("AAAZI2AAhAAA5vTAAA", "20251008171610")


def test_make_etag_is_the_inverse():
    assert make_etag("AAAZI2AAhAAA5vTAAA", "20251008171610") == REAL_ETAG


@pytest.mark.parametrize(
    "etag",
    [
        "",
        '"abc"',
        'W/"not base64!"',
        make_etag("AAA", "2025"),  # objversion is a 14-digit stamp
        'W/"' + "V1wiYWJj" + '"',
    ],
)
def test_malformed_etags_are_refused(etag: str):
    with pytest.raises(ValueError):
        parse_etag(etag)


def test_record_from_entity_drops_the_odata_envelope():
    entity = {
        "@odata.context": "x",
        "@odata.etag": REAL_ETAG,
        "luname": "CustomerOrder",
        "OrderNo": "C1000038587",
        "Objstate": "Released",
    }
    record = IfsRecord.from_entity(entity, "OrderNo")
    assert record.key == "C1000038587" and record.etag == REAL_ETAG
    assert record.data == {
        "luname": "CustomerOrder",
        "OrderNo": "C1000038587",
        "Objstate": "Released",
    }
    assert record.objversion == "20251008171610"


def test_record_takes_the_etag_header_when_the_body_has_none():
    record = IfsRecord.from_entity({"OrderNo": "1"}, "OrderNo", etag=REAL_ETAG)
    assert record.etag == REAL_ETAG
    with pytest.raises(ValueError):
        IfsRecord.from_entity({"OrderNo": "1"}, "OrderNo")
    with pytest.raises(ValueError):
        IfsRecord.from_entity({"@odata.etag": REAL_ETAG}, "OrderNo")
