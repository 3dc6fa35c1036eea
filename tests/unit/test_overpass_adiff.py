"""Augmented diffs (enrichment_actors/overpass_adiff.py): recorded ones, the stand-in's, and their failures.

The recorded files (tests/fixtures/adiff/, SOURCES.md says where each
comes from) are one public server's output and three outputs of Overpass's
own test suite, in the current and an older layout; the stand-in's diffs are
checked against the same reader, so the two cannot drift apart.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import requests

from enrichment_actors.jobs import TagFilter, build_query, validate_job
from enrichment_actors.overpass_adiff import adiff_query, read_adiff
from enrichment_actors.overpass_responses import BadResponse, QueryRejected, QueryTimedOut, RateLimited
from enrichment_actors.stub_overpass import StubOverpass

ADIFFS = Path(__file__).resolve().parents[1] / "fixtures" / "adiff"

#: file -> (osm_base, POIs to write, elements gone, elements dropped: without a usable position)
RECORDED = [
    pytest.param(
        "overpass_api_de_augmented_diff_2012-09-12.xml",
        "2017-01-10T22:29:02Z",
        {("node", 33705646), ("node", 42738202), ("node", 1911156719), ("node", 1911156720)},
        {("node", 332700384), ("node", 443258677), ("node", 1842521970), ("node", 1896619025)},
        3,  # three ways printed with <bounds> and <nd>, no <center>
        id="public-server",
    ),
    pytest.param(
        "overpass_testsuite_adiff_bbox_geom_bb_center_meta.xml",
        None,  # osm_base="" on a server without replication state
        {
            ("node", 1301),
            ("node", 1402),
            ("node", 1404),
            ("node", 14021),
            ("relation", 1331),
            ("way", 1401),
            ("way", 1402),
        },
        # visible="false" (deleted) and visible="true" (moved out of the box: no longer matching)
        {
            ("node", 1401),
            ("node", 14011),
            ("node", 1501),
            ("way", 1501),
            ("relation", 1501),
            ("relation", 1502),
        },
        6,
        id="test-suite-current-layout",
    ),
    pytest.param(
        "overpass_testsuite_adiff_bbox_legacy_no_new.xml",
        None,
        {("node", 1301), ("node", 1402)},
        {("node", 1401), ("node", 1501), ("way", 1501), ("relation", 1501)},  # deletes without <new>
        1,
        id="test-suite-older-layout",
    ),
    pytest.param(
        "overpass_testsuite_adiff_changed_two_dates.xml",
        None,
        {
            ("node", 1102),
            ("node", 1201),
            ("node", 1401),
            ("node", 2101),
            ("node", 2402),
            ("node", 2606),
            ("node", 11021),
        },
        {("node", 1501)},
        0,
        id="test-suite-two-dates",
    ),
]


@pytest.mark.parametrize(("name", "osm_base", "written", "gone", "dropped"), RECORDED)
def test_recorded_diffs_read_as_pois_to_write_and_elements_gone(
    name: str, osm_base: str | None, written: set[tuple[str, int]], gone: set[tuple[str, int]], dropped: int
) -> None:
    parsed = read_adiff(200, (ADIFFS / name).read_bytes(), ())
    assert parsed.osm_base == osm_base
    assert {(p.element_type, p.osm_id) for p in parsed.pois} == written
    assert set(parsed.gone) == gone
    assert (parsed.skipped, parsed.dropped) == (0, dropped)
    # Every element dropped has a readable key: kept, neither written nor gone.
    assert bool(parsed.kept) == bool(dropped)
    assert not set(parsed.kept) & (written | gone)


def test_a_centre_is_the_position_of_a_way_or_relation() -> None:
    parsed = read_adiff(
        200, (ADIFFS / "overpass_testsuite_adiff_bbox_geom_bb_center_meta.xml").read_bytes(), ()
    )
    way = next(p for p in parsed.pois if p.element_type == "way" and p.osm_id == 1401)
    assert (way.lat, way.lon) == (15.0005, 4.01)


@pytest.mark.parametrize(
    ("tags", "written", "gone"),
    [
        # 2402 lost both its tags: gone for a tag set that asked for one of them.
        pytest.param([TagFilter("faa_2")], set(), {("node", 2402), ("node", 1501)}, id="lost-its-tags"),
        # 2101 gained faa_1: written for that tag set.
        pytest.param([TagFilter("faa_1", "baz_1")], {("node", 2101)}, {("node", 1501)}, id="gained-a-tag"),
    ],
)
def test_an_element_is_written_or_gone_by_the_tags_it_has_now(
    tags: list[TagFilter], written: set[tuple[str, int]], gone: set[tuple[str, int]]
) -> None:
    parsed = read_adiff(200, (ADIFFS / "overpass_testsuite_adiff_changed_two_dates.xml").read_bytes(), tags)
    assert {(p.element_type, p.osm_id) for p in parsed.pois} == written
    assert gone <= set(parsed.gone)
    assert not written & set(parsed.gone)


# -- one unusable element costs only itself (issue 16, finding 7) ---------------------------------


def _diff_around(action: str) -> bytes:
    """An augmented diff of two good POIs around ``action``."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<osm version="0.6" generator="Overpass API 0.7.62">\n'
        '<meta osm_base="2025-01-02T08:00:00Z"/>\n'
        '<action type="create"><node id="1" lat="46.5" lon="6.6"><tag k="amenity" v="cafe"/></node></action>\n'
        f"{action}\n"
        '<action type="modify"><old><way id="2"><center lat="46.5" lon="6.6"/><tag k="amenity" v="pub"/></way>'
        '</old><new><way id="2"><center lat="46.51" lon="6.61"/><tag k="amenity" v="bar"/></way></new>'
        "</action>\n</osm>\n"
    ).encode()


def _create(element: str) -> str:
    return f'<action type="create">{element}</action>'


_BENCH = '<tag k="amenity" v="bench"/>'
_KEPT = (("node", 9),)


@pytest.mark.parametrize(
    ("action", "kept", "said"),
    [
        pytest.param(_create(f'<node id="12a" lat="1" lon="2">{_BENCH}</node>'), (), "'12a'", id="id-text"),
        pytest.param(_create(f'<node id="0" lat="1" lon="2">{_BENCH}</node>'), (), "'0'", id="id-zero"),
        pytest.param(_create(f'<node id="-5" lat="1" lon="2">{_BENCH}</node>'), (), "'-5'", id="id-negative"),
        pytest.param(
            _create(f'<node id="9223372036854775808" lat="1" lon="2">{_BENCH}</node>'),
            (),
            "9223372036854775808",
            id="id-above-bigint",
        ),
        pytest.param(_create(f'<node lat="1" lon="2">{_BENCH}</node>'), (), "id=''", id="id-missing"),
        pytest.param(
            '<action type="delete"><old><node id="x9" lat="1" lon="2"/></old></action>',
            (),
            "'x9'",
            id="gone-with-id-text",
        ),
        pytest.param('<action type="modify"><old/><new/></action>', (), "holds no element", id="no-element"),
        pytest.param(
            _create(f'<node id="9" lat="nan" lon="2">{_BENCH}</node>'), _KEPT, "node 9", id="lat-nan"
        ),
        pytest.param(
            _create(f'<node id="9" lat="1" lon="inf">{_BENCH}</node>'), _KEPT, "node 9", id="lon-inf"
        ),
        pytest.param(_create(f'<node id="9" lat="91" lon="2">{_BENCH}</node>'), _KEPT, "node 9", id="lat-91"),
        pytest.param(
            _create(f'<node id="9" lat="1" lon="-180.5">{_BENCH}</node>'), _KEPT, "node 9", id="lon-below-180"
        ),
        pytest.param(
            _create(f'<node id="9" lat="north" lon="2">{_BENCH}</node>'), _KEPT, "node 9", id="lat-text"
        ),
        pytest.param(_create(f'<node id="9" lon="2">{_BENCH}</node>'), _KEPT, "node 9", id="lat-missing"),
        pytest.param(_create(f'<way id="9">{_BENCH}</way>'), (("way", 9),), "way 9", id="no-center"),
        pytest.param(
            _create(f'<relation id="9"><center lat="nan" lon="2"/>{_BENCH}</relation>'),
            (("relation", 9),),
            "relation 9",
            id="center-nan",
        ),
    ],
)
def test_an_unusable_element_of_a_diff_is_dropped_and_counted_and_its_neighbours_kept(
    action: str, kept: tuple[tuple[str, int], ...], said: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        parsed = read_adiff(200, _diff_around(action), [TagFilter("amenity")])

    assert [(p.element_type, p.osm_id) for p in parsed.pois] == [("node", 1), ("way", 2)]
    assert (parsed.dropped, parsed.kept, parsed.gone) == (1, kept, ())
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "Dropped 1 unusable element" in line and said in line
    assert len(line) <= 400


def test_an_element_gone_needs_no_position() -> None:
    deleted = '<action type="delete"><old><node id="9" lat="nan" lon="2"/></old></action>'

    parsed = read_adiff(200, _diff_around(deleted), [TagFilter("amenity")])

    assert (parsed.gone, parsed.dropped, parsed.kept) == ((("node", 9),), 0, ())


def test_the_diff_query_is_the_same_query_in_xml_since_the_timestamp() -> None:
    query = build_query(
        validate_job({"south": 48.0, "west": 2.0, "north": 48.02, "east": 2.02}, ["amenity"]),
        timeout_s=25,
        maxsize_bytes=1024,
    )
    diff = adiff_query(query, "2025-01-01T21:21:00Z")
    assert diff == '[out:xml][adiff:"2025-01-01T21:21:00Z"]' + query.removeprefix("[out:json]")
    with pytest.raises(ValueError, match="out:json"):
        adiff_query("[out:xml];node(1);out;", "2025-01-01T00:00:00Z")


@pytest.mark.parametrize(
    ("status", "body", "error", "words"),
    [
        pytest.param(
            200,
            b'<?xml version="1.0"?>\n<osm version="0.6">\n<meta osm_base="2025-01-01T00:00:00Z"/>\n<action type="cre',
            BadResponse,
            "cut off",
            id="cut-off",
        ),
        pytest.param(
            200,
            b'<?xml version="1.0" encoding="UTF-8"?>\n<osm version="0.6" generator="Overpass API 0.7.62">\n'
            b'<remark> runtime error: Query timed out in "query" at line 1 after 25 seconds. </remark>\n</osm>\n',
            QueryTimedOut,
            "timed out",
            id="timeout-remark",
        ),
        pytest.param(
            400,
            b"<html><body><p><strong>Error</strong>: line 1: parse error</p></body></html>",
            QueryRejected,
            "parse error",
            id="400",
        ),
        pytest.param(429, b"", RateLimited, "429", id="429"),
    ],
)
def test_a_failed_diff_raises_what_a_failed_answer_raises(
    status: int, body: bytes, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words) as raised:
        read_adiff(status, body, [TagFilter("amenity")])
    assert getattr(raised.value, "response_bytes", None) == len(body)


def test_the_stand_in_diff_reads_back_as_the_edits_made() -> None:
    job = validate_job({"south": 48.0, "west": 2.0, "north": 48.02, "east": 2.02}, ["amenity"])
    query = build_query(job, timeout_s=25, maxsize_bytes=1 << 26)
    with StubOverpass() as stub:
        before = stub.elements(query)
        missing, deleted, retagged, moved_on = before[0], before[1], before[2], before[3]
        stub.edit_data(removed=[missing])  # never there in the first version
        stub.edit_data(
            restored=[missing],
            removed=[deleted],
            retagged={retagged: {"shop": "bakery"}, moved_on: {"amenity": "bar"}},
            osm_base="2025-01-02T08:00:00Z",
        )
        body = requests.post(
            stub.interpreter_url, data={"data": adiff_query(query, "2025-01-01T21:21:00Z")}, timeout=10
        ).content
    parsed = read_adiff(200, body, job.tags)
    written = {(p.element_type, p.osm_id) for p in parsed.pois}
    assert parsed.osm_base == "2025-01-02T08:00:00Z"
    assert missing in written or missing[0] != "node"  # a way without a centre is no POI
    assert moved_on in written
    assert set(parsed.gone) == {deleted, retagged}
    assert body.count(b"<action ") == 4
    assert b'visible="false"' in body and b'visible="true"' in body
