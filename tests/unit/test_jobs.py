"""Job validation and the QL it builds."""

from __future__ import annotations

import math

import pytest

from enrichment_actors.jobs import BBox, InvalidJob, JobLimits, TagFilter, build_query, validate_job

BOX = {"south": 48.85, "west": 2.29, "north": 48.86, "east": 2.30}


@pytest.mark.parametrize(
    ("bbox", "tags", "message"),
    [
        (None, None, "bbox must be a mapping"),
        ([1, 2, 3, 4], None, "bbox must be a mapping"),
        ({"south": 1, "west": 1, "north": 2}, None, "missing: east"),
        ({**BOX, "up": 1}, None, "unknown: up"),
        ({**BOX, "south": "48"}, None, "south must be a finite number"),
        ({**BOX, "south": True}, None, "south must be a finite number"),
        ({**BOX, "north": math.nan}, None, "north must be a finite number"),
        ({**BOX, "north": math.inf}, None, "north must be a finite number"),
        ({"south": -91, "west": 0, "north": 0, "east": 0.1}, None, "outside [-90, 90]"),
        ({"south": 0, "west": 0, "north": 90.5, "east": 0.1}, None, "outside [-90, 90]"),
        ({"south": 0, "west": -181, "north": 0.1, "east": 0}, None, "outside [-180, 180]"),
        ({"south": 0, "west": 0, "north": 0.1, "east": 180.01}, None, "outside [-180, 180]"),
        ({"south": 1, "west": 0, "north": 1, "east": 0.1}, None, "must be below north"),
        ({"south": 2, "west": 0, "north": 1, "east": 0.1}, None, "must be below north"),
        ({"south": 0, "west": 1, "north": 0.1, "east": 1}, None, "no width"),
        ({"south": 0, "west": 0, "north": 1, "east": 1}, None, "split it into smaller boxes"),
        ({"south": 0, "west": 179.9, "north": 0.1, "east": 179.8}, None, "split it into smaller boxes"),
        (BOX, "amenity", "must be a list"),
        (BOX, [], "tags is empty"),
        (BOX, [""], "empty"),
        (BOX, ["=cafe"], "tag key"),
        (BOX, ["amenity="], "tag value"),
        (BOX, [" amenity"], "surrounding spaces"),
        (BOX, ["ame\nnity"], "control characters"),
        (BOX, ["amenity=ca\x00fe"], "control characters"),
        (BOX, [42], "string"),
        (BOX, ["k" * 256], "longer than 255"),
        (BOX, [f"k{i}" for i in range(21)], "more than the limit of 20"),
    ],
)
def test_invalid_jobs_say_what_is_wrong(bbox: object, tags: object, message: str) -> None:
    with pytest.raises(InvalidJob, match=None) as raised:
        validate_job(bbox, tags)
    assert message in str(raised.value)


def test_default_tags_when_none_given() -> None:
    job = validate_job(BOX, None, limits=JobLimits(default_tags=("amenity", "shop")))
    assert job.tags == (TagFilter("amenity"), TagFilter("shop"))


def test_duplicate_tags_are_sent_once() -> None:
    assert validate_job(BOX, ["shop", "shop"]).tags == (TagFilter("shop"),)


def test_value_may_contain_equals_signs() -> None:
    assert validate_job(BOX, ["note=a=b"]).tags == (TagFilter("note", "a=b"),)


@pytest.mark.parametrize(
    ("tags", "statements"),
    [
        (["amenity"], 'nwr["amenity"](48.85,2.29,48.86,2.3);'),
        (["shop=bakery"], 'nwr["shop"="bakery"](48.85,2.29,48.86,2.3);'),
        (
            ["amenity", "shop=bakery"],
            'nwr["amenity"](48.85,2.29,48.86,2.3);nwr["shop"="bakery"](48.85,2.29,48.86,2.3);',
        ),
        # Injection attempts stay inside one escaped string literal.
        (['amenity"](1,2,3,4);out;//'], 'nwr["amenity\\"](1,2,3,4);out;//"](48.85,2.29,48.86,2.3);'),
        (['name=x"];node(1);out;'], 'nwr["name"="x\\"];node(1);out;"](48.85,2.29,48.86,2.3);'),
        (["name=back\\slash"], 'nwr["name"="back\\\\slash"](48.85,2.29,48.86,2.3);'),
    ],
)
def test_query_text(tags: list[str], statements: str) -> None:
    query = build_query(validate_job(BOX, tags), timeout_s=25, maxsize_bytes=1000)
    assert query == f"[out:json][timeout:25][maxsize:1000];({statements});out center tags;"


def test_antimeridian_box_becomes_two_parts() -> None:
    job = validate_job({"south": -17, "west": 179.9, "north": -16.9, "east": -179.9}, ["amenity"])
    assert job.bbox.crosses_antimeridian
    assert job.bbox.width_deg == pytest.approx(0.2)
    query = build_query(job, timeout_s=25, maxsize_bytes=1)
    assert 'nwr["amenity"](-17,179.9,-16.9,180);nwr["amenity"](-17,-180,-16.9,-179.9);' in query


@pytest.mark.parametrize(
    "box",
    [BBox(48.0, 2.0, 48.2, 2.4), BBox(-17.0, 179.8, -16.8, -179.8), BBox(0.0, 179.0, 1.0, -179.0)],
)
def test_quarters_cover_the_box_exactly(box: BBox) -> None:
    quarters = box.quarters()
    assert sum(q.area_deg2 for q in quarters) == pytest.approx(box.area_deg2)
    assert all(q.width_deg > 0 and q.height_deg > 0 for q in quarters)
    assert {q.south for q in quarters} == {box.south, box.south + box.height_deg / 2}


def test_split_stops_at_the_minimum_tile() -> None:
    job = validate_job({"south": 0, "west": 0, "north": 0.04, "east": 0.04}, ["amenity"])
    children = job.split(0.01)
    assert len(children) == 4 and all(c.depth == 1 for c in children)
    grandchildren = children[0].split(0.01)
    assert len(grandchildren) == 4
    assert grandchildren[0].split(0.01) == ()


def test_message_round_trip() -> None:
    job = validate_job(BOX, ["amenity", "shop=bakery"], depth=2)
    again = validate_job(**job.as_message())
    assert again == job
