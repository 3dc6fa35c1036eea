"""The stand-in Overpass server: layouts, data, scripted failures, slots and control endpoints."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from enrichment_actors.stub_overpass import OOM_REMARK, TIMEOUT_REMARK, StubOverpass
from tests.support.workers import eventually

LOCAL_SERVER = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "overpass" / "local-server"
PARIS = (48.85, 2.29, 48.86, 2.30)
UA = "overpass-enrichment-tests/0.1 (test suite)"


def bbox_query(*statements: str) -> str:
    return f"[out:json][timeout:25][maxsize:536870912];({''.join(statements)});out center tags;"


def box(s: float, w: float, n: float, e: float) -> str:
    return f"({s},{w},{n},{e})"


def post(stub: StubOverpass, query: str, **kwargs: Any) -> requests.Response:
    return requests.post(stub.interpreter_url, data={"data": query}, headers={"User-Agent": UA}, **kwargs)


def elements(stub: StubOverpass, query: str) -> list[dict[str, Any]]:
    response = post(stub, query)
    assert response.status_code == 200, response.text
    document = response.json()
    assert "remark" not in document, document["remark"]
    return list(document["elements"])


def position(element: dict[str, Any]) -> tuple[float, float]:
    where = element if element["type"] == "node" else element["center"]
    return where["lat"], where["lon"]


def fixture_bytes(name: str) -> bytes:
    path = LOCAL_SERVER / name
    if not path.exists():
        pytest.skip(f"recorded Overpass responses not found at {LOCAL_SERVER}")
    return path.read_bytes()


@pytest.fixture
def stub() -> Iterator[StubOverpass]:
    with StubOverpass() as server:
        yield server


@pytest.fixture(scope="module")
def shared_stub() -> Iterator[StubOverpass]:
    """One stub for the read-only data tests (nothing scripted)."""
    with StubOverpass() as server:
        yield server


# --- layout -----------------------------------------------------------------------------------------


def test_ok_response_has_the_overpass_json_layout(shared_stub: StubOverpass) -> None:
    query = bbox_query(f'nwr["amenity"]{box(48.8, 2.2, 48.9, 2.3)};')
    response = post(shared_stub, query)

    assert response.status_code == 200
    assert response.headers["Content-type"] == "application/json"
    assert int(response.headers["Content-Length"]) == len(response.content)
    document = response.json()
    assert list(document) == ["version", "generator", "osm3s", "elements"]
    assert document["version"] == 0.6
    assert document["generator"].startswith("Overpass API 0.7.62")
    assert list(document["osm3s"]) == ["timestamp_osm_base", "copyright"]
    assert response.text.startswith('{\n  "version": 0.6,\n')
    assert response.text.endswith("}\n\n  ]\n}\n")
    kinds = Counter(e["type"] for e in document["elements"])
    assert set(kinds) == {"node", "way", "relation"}
    for element in document["elements"]:
        assert isinstance(element["id"], int)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in element["tags"].items())
        assert list(element["tags"]) == sorted(element["tags"])
        if element["type"] == "node":
            assert list(element) == ["type", "id", "lat", "lon", "tags"]
            assert all(isinstance(c, float) for c in position(element))
        elif "center" in element:
            assert list(element) == ["type", "id", "center", "tags"]
            assert list(element["center"]) == ["lat", "lon"]
            assert all(isinstance(c, float) for c in position(element))
        else:
            assert element["type"] == "way" and list(element) == ["type", "id", "tags"]
    assert re.search(r'"lat": -?\d+\.\d{7},\n', response.text)


@pytest.mark.parametrize(
    ("query", "fixture", "status"),
    [
        ('[out:json];node["amenity"="no_such_value"](43.72,7.40,43.76,7.44);out;', "11_empty_result", 200),
        ("[out:json];node(43.76,7.40,43.72,7.44);out;", "14_static_error_bbox", 400),
        ("   ", "16_empty_query", 400),
    ],
)
def test_answers_match_the_real_server_byte_for_byte(
    shared_stub: StubOverpass, query: str, fixture: str, status: int
) -> None:
    suffix = ".body.json" if status == 200 else ".body.html"
    response = post(shared_stub, query)

    assert response.status_code == status
    assert response.content == fixture_bytes(fixture + suffix)


@pytest.mark.parametrize(
    ("outcome", "fixture"),
    [("429", "28_rate_limited_429.body.html"), ("504-down:turned-off", "30_dispatcher_off_504.body.html")],
)
def test_scripted_error_pages_match_the_real_server_byte_for_byte(
    stub: StubOverpass, outcome: str, fixture: str
) -> None:
    stub.script(outcome)
    response = post(stub, bbox_query(f'nwr["amenity"]{box(*PARIS)};'))

    assert response.content == fixture_bytes(fixture)
    assert response.headers["Content-type"] == "text/html; charset=utf-8"


def test_remark_layout_matches_the_real_server(stub: StubOverpass) -> None:
    recorded = fixture_bytes("17_timeout_runtime_error.body.json").decode()
    real_remark = json.loads(recorded)["remark"]
    stub.script("timeout-remark")

    body = post(stub, bbox_query(f'nwr["amenity"]{box(*PARIS)};')).text

    assert body == recorded.replace(json.dumps(real_remark), json.dumps(TIMEOUT_REMARK))


# --- data -------------------------------------------------------------------------------------------


def test_same_query_gives_the_same_bytes_across_calls_and_servers(shared_stub: StubOverpass) -> None:
    query = bbox_query(f'nwr["amenity"]{box(*PARIS)};', f'nwr["shop"="bakery"]{box(*PARIS)};')
    first = post(shared_stub, query).content
    with StubOverpass() as other:
        assert post(other, query).content == first
    assert post(shared_stub, query).content == first
    assert len(json.loads(first)["elements"]) > 3


def test_overlapping_boxes_agree_on_every_shared_element(shared_stub: StubOverpass) -> None:
    left = elements(shared_stub, bbox_query(f'nwr{box(48.85, 2.29, 48.87, 2.31)}["amenity"];'))
    right = elements(shared_stub, bbox_query(f'nwr["amenity"]{box(48.86, 2.30, 48.88, 2.32)};'))
    left_by_key = {(e["type"], e["id"]): e for e in left}
    in_overlap = [
        e
        for e in right
        if (e["type"] == "node" or "center" in e)
        and 48.86 <= position(e)[0] <= 48.87
        and 2.30 <= position(e)[1] <= 2.31
    ]

    assert in_overlap, "the two boxes should share elements"
    for element in in_overlap:
        assert element == left_by_key[element["type"], element["id"]]


def test_elements_lie_inside_the_box(shared_stub: StubOverpass) -> None:
    found = elements(shared_stub, bbox_query(f'nwr["amenity"]{box(*PARIS)};'))

    assert found
    for element in found:
        if element["type"] == "node" or "center" in element:
            lat, lon = position(element)
            assert PARIS[0] <= lat <= PARIS[2] and PARIS[1] <= lon <= PARIS[3]


AREA = box(48.7, 2.2, 48.9, 2.4)


@pytest.fixture(scope="module")
def everything_in_area(shared_stub: StubOverpass) -> list[dict[str, Any]]:
    return elements(shared_stub, bbox_query(f"nwr{AREA};"))


@pytest.mark.parametrize(
    ("statement", "check"),
    [
        ('nwr["amenity"]', lambda e: "amenity" in e["tags"]),
        ('nwr["shop"="bakery"]', lambda e: e["tags"].get("shop") == "bakery"),
        ('node["amenity"="cafe"]', lambda e: e["type"] == "node" and e["tags"].get("amenity") == "cafe"),
        ('way["amenity"]', lambda e: e["type"] == "way" and "amenity" in e["tags"]),
        ('relation["tourism"]', lambda e: e["type"] == "relation" and "tourism" in e["tags"]),
        ('nwr["amenity"]["name"]', lambda e: "amenity" in e["tags"] and "name" in e["tags"]),
        ("nwr[amenity=pharmacy]", lambda e: e["tags"].get("amenity") == "pharmacy"),
        ('nwr["name"="Café \\"Chez Léon\\""]', lambda e: e["tags"].get("name") == 'Café "Chez Léon"'),
    ],
)
def test_tag_filters_select_exactly_the_matching_elements(
    shared_stub: StubOverpass, everything_in_area: list[dict[str, Any]], statement: str, check: Any
) -> None:
    found = elements(shared_stub, bbox_query(f"{statement}{AREA};"))

    assert found, f"{statement} should match something in {AREA}"
    assert found == [e for e in everything_in_area if check(e)]


def test_statements_are_unioned_each_element_once(shared_stub: StubOverpass) -> None:
    cafes = elements(shared_stub, bbox_query(f'nwr["amenity"="cafe"]{box(*PARIS)};'))
    named = elements(shared_stub, bbox_query(f'nwr["name"]{box(*PARIS)};'))
    both = elements(
        shared_stub, bbox_query(f'nwr["amenity"="cafe"]{box(*PARIS)};', f'nwr["name"]{box(*PARIS)};')
    )
    keys = [(e["type"], e["id"]) for e in both]

    assert len(keys) == len(set(keys))
    assert set(keys) == {(e["type"], e["id"]) for e in cafes + named}
    assert keys == sorted(keys, key=lambda k: (["node", "way", "relation"].index(k[0]), k[1]))


def test_the_mix_of_types_centers_and_ids_is_realistic(shared_stub: StubOverpass) -> None:
    found = elements(shared_stub, bbox_query(f"nwr{box(48.6, 2.0, 48.9, 2.3)};"))
    kinds = Counter(e["type"] for e in found)
    ways = [e for e in found if e["type"] == "way"]
    ids_by_kind = {k: {e["id"] for e in found if e["type"] == k} for k in kinds}

    assert 0.65 < kinds["node"] / len(found) < 0.75
    assert 0.20 < kinds["way"] / len(found) < 0.30
    assert 0.03 < kinds["relation"] / len(found) < 0.07
    assert 0.01 < sum("center" not in w for w in ways) / len(ways) < 0.06
    assert all("center" in e for e in found if e["type"] == "relation")
    assert ids_by_kind["node"] & ids_by_kind["way"], "a node and a way should share a numeric id somewhere"
    assert 0.6 < sum("name" in e["tags"] for e in found) / len(found) < 0.9


def test_a_box_across_the_antimeridian_covers_both_sides(shared_stub: StubOverpass) -> None:
    found = elements(shared_stub, bbox_query(f"nwr{box(-17.9, 179.9, -17.8, -179.9)};"))
    lons = [position(e)[1] for e in found if e["type"] == "node"]

    assert any(lon >= 179.9 for lon in lons) and any(lon <= -179.9 for lon in lons)
    assert all(lon >= 179.9 or lon <= -179.9 for lon in lons)


def test_pois_per_box_keeps_the_first_elements(shared_stub: StubOverpass) -> None:
    query = bbox_query(f'nwr["amenity"]{box(48.8, 2.2, 48.9, 2.3)};')
    everything = elements(shared_stub, query)
    with StubOverpass(pois_per_box=5) as capped:
        assert elements(capped, query) == everything[:5]


def test_a_tenth_of_a_degree_box_answers_well_under_50_ms(shared_stub: StubOverpass) -> None:
    query = bbox_query(f"nwr{box(48.8, 2.2, 48.9, 2.3)};")
    with requests.Session() as session:
        timings = []
        for _ in range(3):
            began = time.perf_counter()
            response = session.post(shared_stub.interpreter_url, data={"data": query})
            timings.append(time.perf_counter() - began)

    assert response.status_code == 200 and len(response.json()["elements"]) > 500
    assert min(timings) < 0.05, f"fastest of three took {min(timings) * 1000:.0f} ms"


def test_a_box_of_too_many_cells_runs_out_of_memory(shared_stub: StubOverpass) -> None:
    response = post(shared_stub, bbox_query(f'nwr["amenity"]{box(40.0, 0.0, 42.0, 2.0)};'))

    assert response.status_code == 200
    assert response.json()["remark"] == OOM_REMARK
    assert response.json()["elements"] == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (bbox_query(f'nwr["amenity"]{box(48.86, 2.29, 48.85, 2.30)};'), "must always be greater or equal"),
        (bbox_query(f'nwr["amenity"]{box(91, 2.29, 92, 2.30)};'), "between -90.0 and 90.0"),
        (bbox_query('nwr["amenity"~"cafe"](48.85,2.29,48.86,2.30);'), "only understands the filters"),
        ("[out:json];node(around:300,48.85,2.29);out;", "only understands bbox statements"),
    ],
)
def test_queries_the_server_refuses_get_a_400_page(
    shared_stub: StubOverpass, query: str, message: str
) -> None:
    response = post(shared_stub, query)

    assert response.status_code == 400
    assert "<title>OSM3S Response</title>" in response.text
    assert message in response.text.replace("&quot;", '"')


# --- scripted outcomes ------------------------------------------------------------------------------


def _json_remark(response: requests.Response) -> Any:
    return response.json().get("remark")


@pytest.mark.parametrize(
    ("outcome", "status", "content_type", "marker"),
    [
        ("ok", 200, "application/json", None),
        ("429", 429, "text/html", "Dispatcher_Client::request_read_and_idx::rate_limited. Please check"),
        ("504", 504, "text/html", "The server is probably too busy to handle your request."),
        ("504-down", 504, "text/html", "Dispatcher_Client::1"),
        ("504-down:turned-off", 504, "text/html", "is turned off"),
        ("400", 400, "text/html", "parse error:"),
        ("406", 406, "text/html", "Not Acceptable"),
        ("500", 500, "text/html", "500 Internal Server Error"),
        ("timeout-remark", 200, "application/json", TIMEOUT_REMARK),
        ("oom-remark", 200, "application/json", OOM_REMARK),
        ("partial-remark", 200, "application/json", TIMEOUT_REMARK),
        ("stall:0.05", 200, "application/json", None),
    ],
)
def test_each_scripted_outcome_has_its_status_and_body(
    stub: StubOverpass, outcome: str, status: int, content_type: str, marker: str | None
) -> None:
    query = bbox_query(f'nwr["amenity"]{box(48.84, 2.28, 48.87, 2.31)};')
    complete = elements(stub, query)
    stub.script(outcome)

    response = post(stub, query)
    after = post(stub, query)

    assert response.status_code == status
    assert response.headers["Content-type"].startswith(content_type)
    if content_type == "application/json":
        assert _json_remark(response) == marker
        got = response.json()["elements"]
        if outcome == "partial-remark":
            assert 0 < len(got) < len(complete) and got == complete[: len(got)]
        else:
            assert got == ([] if marker else complete)
    else:
        assert marker in response.text
    assert after.status_code == 200 and "remark" not in after.json()
    name = outcome.split(":", maxsplit=1)[0]
    assert stub.stats().served == ({"ok": 3} if name == "ok" else {"ok": 2, name: 1})


def test_cutoff_sends_half_a_document_and_closes(stub: StubOverpass) -> None:
    stub.script("cutoff")

    response = post(stub, bbox_query(f'nwr["amenity"]{box(48.8, 2.2, 48.9, 2.3)};'))

    assert response.status_code == 200
    assert "Content-Length" not in response.headers
    assert response.headers["Connection"] == "close"
    assert response.text.startswith('{\n  "version": 0.6,')
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)


def test_script_is_consumed_in_order_then_the_default_applies(stub: StubOverpass) -> None:
    query = bbox_query(f'nwr["amenity"]{box(*PARIS)};')
    stub.script("429", "504")
    stub.script("500")
    stub.set_default("504-down")

    codes = [post(stub, query).status_code for _ in range(5)]
    stub.reset()

    assert codes == [429, 504, 500, 504, 504]
    assert post(stub, query).status_code == 200
    assert stub.stats().calls == 1


@pytest.mark.parametrize("outcome", ["nope", "stall", "stall:soon", "stall:-1", "429:3", "OK"])
def test_unknown_outcomes_are_refused_with_the_accepted_list(stub: StubOverpass, outcome: str) -> None:
    with pytest.raises(ValueError, match="stall"):
        stub.script(outcome)


def test_stall_makes_a_short_client_timeout_fire_and_stop_is_prompt() -> None:
    stub = StubOverpass().start()
    stub.script("stall:5")
    query = bbox_query(f'nwr["amenity"]{box(*PARIS)};')

    with pytest.raises(requests.exceptions.ReadTimeout):
        post(stub, query, timeout=0.2)
    assert stub.stats().in_flight == 1
    began = time.monotonic()
    stub.stop()

    assert time.monotonic() - began < 0.5
    assert stub.stats().in_flight == 0
    assert stub.stats().served == {"aborted": 1}


def test_stop_is_prompt_while_a_latency_wait_is_running() -> None:
    stub = StubOverpass(latency_s=5).start()
    worker = threading.Thread(target=_ignore_errors, args=(post, stub, bbox_query(f"nwr{box(*PARIS)};")))
    worker.start()
    while stub.stats().in_flight == 0:
        time.sleep(0.005)
    began = time.monotonic()
    stub.stop()
    worker.join(1)

    assert time.monotonic() - began < 0.5
    assert not worker.is_alive()
    assert stub.stats().served == {"aborted": 1}


def test_a_stopped_stub_restarts_on_the_same_port(stub: StubOverpass) -> None:
    url = stub.url
    stub.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/api/status", timeout=1)

    stub.start()

    assert stub.url == url
    assert requests.get(stub.status_url, timeout=1).status_code == 200


# --- concurrency and slots --------------------------------------------------------------------------


def _concurrently(count: int, call: Any) -> list[Any]:
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    return results


def test_peak_in_flight_counts_concurrent_calls() -> None:
    with StubOverpass(latency_s=0.2, slots=2) as stub:
        query = bbox_query(f'nwr["amenity"]{box(*PARIS)};')
        responses = _concurrently(4, lambda: post(stub, query))
        stats = stub.stats()

    assert [r.status_code for r in responses] == [200] * 4
    assert stats.peak_in_flight == 4 and stats.in_flight == 0 and stats.calls == 4
    assert stats.rejected_over_slots == 0


def test_enforced_slots_reject_calls_above_the_limit_with_429() -> None:
    with StubOverpass(latency_s=0.3, slots=2, enforce_slots=True) as stub:
        stub.script("ok", "ok", "504")
        query = bbox_query(f'nwr["amenity"]{box(*PARIS)};')
        responses = _concurrently(4, lambda: post(stub, query))
        stats = stub.stats()
        later = post(stub, query)

    assert sorted(r.status_code for r in responses) == [200, 200, 429, 429]
    assert all("rate_limited" in r.text for r in responses if r.status_code == 429)
    assert stats.rejected_over_slots == 2 and stats.served == {"ok": 2, "429": 2}
    assert later.status_code == 504, "rejected calls must not consume the script"


def test_many_concurrent_keep_alive_clients_are_served() -> None:
    query = bbox_query(f'nwr["amenity"]{box(*PARIS)};', f'nwr["shop"]{box(*PARIS)};')

    def client() -> list[int]:
        with requests.Session() as session:
            return [session.post(stub.interpreter_url, data={"data": query}).status_code for _ in range(15)]

    with StubOverpass() as stub:
        began = time.monotonic()
        codes = [c for batch in _concurrently(16, client) for c in batch]
        elapsed = time.monotonic() - began
        assert stub.stats().calls == 240

    assert codes == [200] * 240
    assert elapsed < 3, f"240 calls took {elapsed:.2f} s"


# --- /api/status and /api/kill_my_queries -----------------------------------------------------------

_HEAD = r"Connected as: 2130706433\nCurrent time: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\nAnnounced endpoint: none\n"
_RUNNING_HEADER = r"Currently running queries \(pid, space limit, time limit, start time\):\n"


@pytest.mark.parametrize(
    ("slots", "stalled", "expected"),
    [
        (0, 0, _HEAD + r"Rate limit: 0\n" + _RUNNING_HEADER),
        (2, 0, _HEAD + r"Rate limit: 2\n2 slots available now\.\n" + _RUNNING_HEADER),
        (
            2,
            1,
            _HEAD
            + r"Rate limit: 2\n1 slots available now\.\n"
            + _RUNNING_HEADER
            + r"\d+\t536870912\t25\t\S+Z\n",
        ),
        (
            1,
            1,
            _HEAD
            + r"Rate limit: 1\nSlot available after: \S+Z, in 1 seconds\.\n"
            + _RUNNING_HEADER
            + r"\d+\t536870912\t25\t\S+Z\n",
        ),
    ],
    ids=["unlimited", "free", "one-busy", "all-busy"],
)
def test_status_text_reports_the_slots(slots: int, stalled: int, expected: str) -> None:
    with StubOverpass(slots=slots) as stub:
        stub.script(*["stall:5"] * stalled)
        for _ in range(stalled):
            threading.Thread(
                target=_ignore_errors, args=(post, stub, bbox_query(f"nwr{box(*PARIS)};"))
            ).start()
        while stub.stats().in_flight < stalled:
            time.sleep(0.005)

        response = requests.get(stub.status_url, timeout=1)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert re.fullmatch(expected, response.text), response.text
    assert stub.stats().status_calls == 1


def _ignore_errors(function: Any, *args: Any) -> None:
    with contextlib.suppress(requests.RequestException):
        function(*args)


def test_status_of_an_unlimited_server_matches_the_real_one(stub: StubOverpass) -> None:
    recorded = fixture_bytes("21_status.body.txt").decode()
    text = requests.get(stub.status_url, timeout=1).text
    now = re.compile(r"Current time: \S+")

    assert now.sub("", text) == now.sub("", recorded)


def test_status_says_the_server_is_down_while_the_dispatcher_is_down(stub: StubOverpass) -> None:
    stub.set_default("504-down")

    response = requests.get(stub.status_url, timeout=1)

    assert response.status_code == 504
    assert response.content == fixture_bytes("31_status_dispatcher_off.body.txt")


def test_kill_my_queries_ends_stalled_calls_and_frees_their_slots() -> None:
    with StubOverpass(slots=1) as stub:
        stub.script("stall:5")
        results: list[BaseException] = []

        def call() -> None:
            try:
                post(stub, bbox_query(f"nwr{box(*PARIS)};"), timeout=3)
            except requests.RequestException as error:
                results.append(error)

        worker = threading.Thread(target=call)
        worker.start()
        while stub.stats().in_flight == 0:
            time.sleep(0.005)
        assert "Slot available after" in requests.get(stub.status_url, timeout=1).text

        kill = requests.get(stub.url + "/api/kill_my_queries", timeout=1)
        worker.join(1)

        assert kill.status_code == 200 and kill.text == "Killed 1 queries.\n"
        assert not worker.is_alive() and len(results) == 1
        assert "1 slots available now." in requests.get(stub.status_url, timeout=1).text
        assert stub.stats().kill_calls == 1 and stub.stats().served == {"killed": 1}


# --- recording and control endpoints ----------------------------------------------------------------


def test_requests_are_recorded_with_query_agent_and_outcome(stub: StubOverpass) -> None:
    query = bbox_query(f'nwr["amenity"]{box(*PARIS)};')
    stub.script("504")
    post(stub, query)
    get = requests.get(stub.interpreter_url, params={"data": query}, headers={"User-Agent": "probe/1"})
    requests.get(stub.status_url, headers={"User-Agent": "probe/1"})

    recorded = stub.requests

    assert get.status_code == 200 and get.json()["elements"]
    assert [(r.path, r.method, r.query, r.user_agent, r.outcome) for r in recorded] == [
        ("/api/interpreter", "POST", query, UA, "504"),
        ("/api/interpreter", "GET", query, "probe/1", "ok"),
        ("/api/status", "GET", "", "probe/1", "status"),
    ]
    assert all(r.started_at <= r.ended_at for r in recorded)


def test_control_endpoints_work_over_http(stub: StubOverpass) -> None:
    query = bbox_query(f'nwr["amenity"]{box(*PARIS)};')

    scripted = requests.post(
        stub.url + "/_stub/script",
        json={"outcomes": ["429", "timeout-remark"], "default": "504", "latency_s": 0},
    )
    codes = [post(stub, query).status_code for _ in range(3)]
    stats = requests.get(stub.url + "/_stub/stats").json()
    refused = requests.post(stub.url + "/_stub/script", json={"outcomes": ["teapot"]})
    reset = requests.post(stub.url + "/_stub/reset")

    assert scripted.status_code == 200 and scripted.json() == {"queued": 2}
    assert codes == [429, 200, 504]
    assert 0 < stats.pop("server_s") < 1.0  # the stub's own time for the three calls
    assert stats == {
        "calls": 3,
        "served": {"429": 1, "timeout-remark": 1, "504": 1},
        "in_flight": 0,
        "peak_in_flight": 1,
        "status_calls": 0,
        "kill_calls": 0,
        "rejected_over_slots": 0,
        "held": 0,
        "refused_duplicates": 0,
    }
    assert refused.status_code == 400 and "teapot" in refused.json()["error"]
    assert reset.status_code == 200
    assert requests.get(stub.url + "/_stub/stats").json()["calls"] == 0
    assert post(stub, query).status_code == 200


def test_control_endpoint_sets_the_latency(stub: StubOverpass) -> None:
    requests.post(stub.url + "/_stub/script", json={"latency_s": 0.15})

    began = time.monotonic()
    post(stub, bbox_query(f"nwr{box(*PARIS)};"))

    assert time.monotonic() - began >= 0.15


def test_serve_forever_prints_its_url_and_stops_on_sigterm() -> None:
    code = "from enrichment_actors.stub_overpass import serve_forever; serve_forever(0, slots=3)"
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as process:
        watchdog = threading.Timer(10, process.kill)  # a hung child must not hang the suite
        watchdog.start()
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            url = re.search(r"http://127\.0\.0\.1:\d+", line)
            assert url, f"expected a URL line, got {line!r}"
            assert "Rate limit: 3" in requests.get(url.group(0) + "/api/status", timeout=2).text
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=3) == 0
        finally:
            watchdog.cancel()
            process.kill()


# --- like a real 0.7.62 server: held queries, duplicates, server faults, trickles --------------------

RECORDINGS = Path(__file__).resolve().parents[3] / "shared" / "recordings" / "overpass-0.7.62"
OWN_DUPLICATE = (
    Path(__file__).resolve().parents[1]
    / "fixtures"
    / "overpass"
    / "local-server"
    / "32_duplicate_query.body.html"
)


def post_in_thread(stub: StubOverpass, query: str, results: list[requests.Response]) -> threading.Thread:
    def run() -> None:
        with contextlib.suppress(requests.RequestException):  # cut short when the stub stops
            results.append(post(stub, query, timeout=30))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_query_over_the_limit_is_held_until_a_slot_frees_then_runs() -> None:
    query = bbox_query(f'nwr["amenity"]{box(*PARIS)};')
    with StubOverpass(slots=1, hold_s=5.0) as stub:
        stub.script("stall:0.6", "ok")
        first: list[requests.Response] = []
        running = post_in_thread(stub, query, first)
        eventually(lambda: stub.stats().in_flight == 1)

        held = post(stub, query, timeout=30)
        running.join()

        assert (first[0].status_code, held.status_code) == (200, 200)
        assert "elements" in held.json()
        (_, later) = sorted(stub.requests, key=lambda r: r.started_at)
        assert later.admitted_at is not None and later.admitted_at - later.started_at > 0.3
        assert stub.stats().held == 1 and stub.stats().rejected_over_slots == 0


def test_a_held_query_gets_a_429_when_no_slot_frees_within_the_hold() -> None:
    query = bbox_query(f'nwr["amenity"]{box(*PARIS)};')
    with StubOverpass(slots=1, hold_s=0.3) as stub:
        stub.script("stall:3")
        first: list[requests.Response] = []
        post_in_thread(stub, query, first)
        eventually(lambda: stub.stats().in_flight == 1)
        started = time.monotonic()

        held = post(stub, query)

        assert held.status_code == 429 and "rate_limited" in held.text
        assert time.monotonic() - started >= 0.3
        assert stub.stats().held == 1 and stub.stats().rejected_over_slots == 1


def test_a_429_comes_at_once_only_when_more_than_twice_the_limit_wait() -> None:
    query = bbox_query(f'nwr["amenity"]{box(*PARIS)};')
    with StubOverpass(slots=1, hold_s=5.0) as stub:
        stub.script("stall:5")
        results: list[requests.Response] = []
        threads = [post_in_thread(stub, query, results)]
        eventually(lambda: stub.stats().in_flight == 1)
        for waiting in (1, 2, 3):
            threads.append(post_in_thread(stub, query, results))
            eventually(lambda waiting=waiting: stub.stats().held == waiting)  # type: ignore[misc]
        started = time.monotonic()

        refused = post(stub, query)

        assert refused.status_code == 429 and time.monotonic() - started < 2.0
        assert stub.stats().rejected_over_slots == 1
        with requests.get(stub.status_url) as status:
            assert len(re.findall(r"^\d+\t", status.text, re.MULTILINE)) == 1  # held ones are not running
        requests.get(stub.url + "/api/kill_my_queries")  # ends the running one, not the held ones
        for thread in threads:
            thread.join()
        assert sorted(r.status_code for r in results).count(200) == 3


def test_the_same_text_a_third_time_within_its_timeout_is_refused_as_a_duplicate() -> None:
    query = f'[out:json][timeout:1];nwr["amenity"]{box(*PARIS)};out center tags;'
    other = f'[out:json][timeout:1];nwr["shop"]{box(*PARIS)};out center tags;'
    with StubOverpass(refuse_duplicates=True) as stub:
        first, second, third = (post(stub, query) for _ in range(3))
        different = post(stub, other)
        time.sleep(1.1)  # the window of the first two is over
        later = post(stub, query)

        assert [r.status_code for r in (first, second, third, different, later)] == [200] * 5
        assert "elements" in first.json() and "elements" in second.json()
        assert "Dispatcher_Client::request_read_and_idx::duplicate_query" in third.text
        assert "elements" in different.json() and "elements" in later.json()
        assert stub.stats().refused_duplicates == 1


def test_the_duplicate_page_is_the_recorded_one_byte_for_byte(stub: StubOverpass) -> None:
    stub.script("duplicate")

    response = post(stub, bbox_query(f'nwr["amenity"]{box(*PARIS)};'))

    assert response.status_code == 200
    assert response.headers["Content-type"] == "text/html; charset=utf-8"
    assert response.content == OWN_DUPLICATE.read_bytes()
    if (RECORDINGS / "32_duplicate_query.body.html").exists():
        assert response.content == (RECORDINGS / "32_duplicate_query.body.html").read_bytes()


@pytest.mark.parametrize(
    ("outcome", "label"),
    [
        ("enomem-remark", "server_unwell"),
        ("blocks-remark", "server_unwell"),
        ("protocol-error", "protocol_error"),
        ("duplicate", "duplicate_query"),
    ],
)
def test_server_faults_arrive_as_200_and_are_told_apart(stub: StubOverpass, outcome: str, label: str) -> None:
    from enrichment_actors.overpass_responses import classify

    stub.script(outcome)

    response = post(stub, bbox_query(f'nwr["amenity"]{box(*PARIS)};'))

    assert response.status_code == 200
    assert classify(response.status_code, response.content) == label


def test_a_trickle_sends_the_whole_answer_a_few_bytes_at_a_time(stub: StubOverpass) -> None:
    query = bbox_query(f'nwr["amenity"]{box(48.85, 2.29, 48.851, 2.291)};')
    whole = post(stub, query).content
    stub.script("trickle:0.001")
    pieces = []

    with requests.post(stub.interpreter_url, data={"data": query}, stream=True) as response:
        while piece := response.raw.read1(1 << 16):
            pieces.append(piece)

    assert b"".join(pieces) == whole
    assert len(pieces) > 4  # it came in many small pieces (fewer than sent when a loaded client lags)
    eventually(lambda: stub.stats().served.get("trickle") == 1)  # counted once the last byte is out


def test_kill_my_queries_ends_a_trickle(stub: StubOverpass) -> None:
    stub.script("trickle:0.5")
    query = bbox_query(f'nwr["amenity"]{box(*PARIS)};')
    with requests.post(stub.interpreter_url, data={"data": query}, stream=True, timeout=10) as response:
        eventually(lambda: stub.stats().in_flight == 1)
        requests.get(stub.url + "/api/kill_my_queries")
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            response.content  # noqa: B018

    eventually(lambda: stub.stats().served.get("killed") == 1)
