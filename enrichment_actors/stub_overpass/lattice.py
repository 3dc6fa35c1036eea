"""Deterministic POIs on a global lattice: the same cell always holds the same POI, on every server.

One cell is 0.002 x 0.002 degrees; about a third of the cells hold a node, a
way or a relation with realistic tags. Answers are printed in Overpass order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from .pages import json_string
from .queries import Box, Query

_CELL_E7 = 20_000  # one lattice cell is 0.002 x 0.002 degrees
_ROWS = 180 * 10_000_000 // _CELL_E7
_COLS = 360 * 10_000_000 // _CELL_E7
MAX_CELLS_PER_BOX = 200_000
_POI_THRESHOLD = 23_000  # of 65,536: about 35 % of cells hold a POI
_KIND_ORDER = {"node": 0, "way": 1, "relation": 2}

# (key, value, weight, name stems); no stems means the POI has no name.
_CATEGORIES: tuple[tuple[str, str, int, tuple[str, ...]], ...] = (
    ("amenity", "cafe", 12, ("Café", "Coffee House", "Espresso Bar", 'Café "Chez Léon"', "Le Petit Café")),
    ("amenity", "restaurant", 14, ("Trattoria", "Bistro", "Brasserie", "Taverna", "Le Gourmet", "Sakura")),
    ("amenity", "fast_food", 6, ("Burger Corner", "Kebab Haus", "Pizza Express", "Falafel & Co")),
    ("amenity", "bar", 5, ("The Anchor", "Bar Central", "Zum Löwen", "Le Zinc")),
    ("amenity", "pharmacy", 5, ("Pharmacie", "Apotheke", "City Pharmacy", "Farmacia")),
    ("amenity", "bank", 4, ("Crédit Mutuel", "Sparkasse", "BNP Paribas", "Barclays")),
    ("amenity", "school", 4, ("École élémentaire", "Grundschule", "Primary School", "Lycée")),
    ("amenity", "post_office", 2, ("La Poste", "Post Office", "Postfiliale")),
    ("amenity", "fuel", 3, ("TotalEnergies", "Shell", "Aral", "Esso")),
    ("amenity", "library", 1, ("Bibliothèque", "Stadtbibliothek", "Public Library")),
    ("amenity", "place_of_worship", 2, ("Église Saint-Pierre", "St. Mary's Church", "Chapelle")),
    ("amenity", "parking", 6, ()),
    ("amenity", "bench", 5, ()),
    ("amenity", "toilets", 2, ()),
    ("shop", "bakery", 6, ("Boulangerie", "Bäckerei", "Le Fournil", "Bread & Butter")),
    ("shop", "supermarket", 5, ("Carrefour", "Lidl", "Aldi", "Monoprix", "Edeka")),
    ("shop", "convenience", 5, ("Proxi", "Spar", "Épicerie", "Corner Shop")),
    ("shop", "clothes", 5, ("Zara", "H&M", "Boutique Élise", "Mode & Stil")),
    ("shop", "hairdresser", 4, ("Salon Coiffure", "Hair Studio", "Friseur Schnitt")),
    ("shop", "butcher", 2, ("Boucherie", "Metzgerei", "Butcher's")),
    ("shop", "books", 2, ("Librairie", "Buchhandlung", "Book Nook")),
    ("shop", "florist", 2, ("Fleuriste", "Blumen Haus", "Flower Corner")),
    ("tourism", "hotel", 4, ("Hôtel du Parc", "Grand Hotel", "Hotel Europa", "Ibis")),
    ("tourism", "museum", 2, ("Musée", "Stadtmuseum", "Museum of Art")),
    ("tourism", "attraction", 2, ("Fontaine", "Old Tower", "Aussichtspunkt")),
    ("leisure", "park", 3, ("Parc", "Stadtpark", "Jardin", "Green")),
    ("leisure", "fitness_centre", 2, ("Basic-Fit", "Fitness Park", "McFit")),
)
_WEIGHTED = tuple(i for i, category in enumerate(_CATEGORIES) for _ in range(category[2]))
_PLACES = ("du Parc", "de la Gare", "Central", "Saint-Michel", "am Markt", "Riverside", "Plaza", "Nord")
_STREETS = ("Rue de la Paix", "Hauptstraße", "High Street", "Via Roma", "Calle Mayor", "Avenue Foch")
_HOURS = ("Mo-Fr 08:00-18:00", "Mo-Sa 09:00-19:00; Su off", "24/7", "Tu-Su 10:00-22:00")
_CUISINES = ("italian", "french", "pizza", "japanese", "regional", "indian", "burger")
_UNNAMED_EXTRAS = {
    "parking": (("parking", ("surface", "underground", "multi-storey")), ("fee", ("yes", "no"))),
    "bench": (("backrest", ("yes", "no")),),
    "toilets": (("fee", ("no", "yes")), ("unisex", ("yes",))),
}


@dataclass(frozen=True)
class Poi:
    kind: str
    osm_id: int
    lat_e7: int
    lon_e7: int
    has_center: bool
    tags: dict[str, str]  # sorted by key, as Overpass prints them

    def sort_key(self) -> tuple[int, int]:
        return (_KIND_ORDER[self.kind], self.osm_id)

    def to_json(self) -> str:
        """This element as Overpass prints it for ``out center tags``."""
        head = f'{{\n  "type": "{self.kind}",\n  "id": {self.osm_id},\n'
        if self.kind == "node":
            where = f'  "lat": {_degrees(self.lat_e7)},\n  "lon": {_degrees(self.lon_e7)},\n'
        elif self.has_center:
            where = (
                f'  "center": {{\n    "lat": {_degrees(self.lat_e7)},\n'
                f'    "lon": {_degrees(self.lon_e7)}\n  }},\n'
            )
        else:
            where = ""
        tags = ",\n".join(f"    {json_string(k)}: {json_string(v)}" for k, v in self.tags.items())
        return f'{head}{where}  "tags": {{\n{tags}\n  }}\n}}'


def _degrees(e7: int) -> str:
    whole, fraction = divmod(abs(e7), 10_000_000)
    return f"{'-' if e7 < 0 else ''}{whole}.{fraction:07d}"


def _poi_at(row: int, col: int) -> Poi | None:
    """The POI of one lattice cell, or None: the same cell always gives the same answer."""
    cell = row * _COLS + col
    d = hashlib.blake2b(cell.to_bytes(8, "little"), digest_size=24, person=b"stub-osm").digest()
    if int.from_bytes(d[0:2], "little") >= _POI_THRESHOLD:
        return None
    kind = "node" if d[2] < 179 else "way" if d[2] < 243 else "relation"
    # Ids follow the cell, so they are unique per type, while a node and a way in neighbouring cells
    # can share a number, as in OSM: the key is (type, id).
    osm_id = cell + 1 + _KIND_ORDER[kind]
    lat_e7 = -900_000_000 + row * _CELL_E7 + 2_000 + int.from_bytes(d[4:6], "little") % 16_001
    lon_e7 = -1_800_000_000 + col * _CELL_E7 + 2_000 + int.from_bytes(d[6:8], "little") % 16_001
    has_center = kind != "way" or d[3] >= 8  # about 3 % of ways come without a center
    return Poi(kind, osm_id, lat_e7, lon_e7, has_center, _tags(d, kind, osm_id))


def poi_of(kind: str, osm_id: int) -> Poi | None:
    """The lattice POI ``(kind, osm_id)`` where it was first placed (ids follow the cell); None: no such POI."""
    cell = osm_id - 1 - _KIND_ORDER.get(kind, 0)
    if kind not in _KIND_ORDER or not 0 <= cell < _ROWS * _COLS:
        return None
    poi = _poi_at(*divmod(cell, _COLS))
    return poi if poi is not None and poi.kind == kind and poi.osm_id == osm_id else None


def _tags(d: bytes, kind: str, osm_id: int) -> dict[str, str]:
    key, value, _, stems = _CATEGORIES[_WEIGHTED[int.from_bytes(d[8:10], "little") % len(_WEIGHTED)]]
    tags = {key: value}
    if stems and d[10] < 230:
        stem = stems[d[11] % len(stems)]
        tags["name"] = stem if d[12] & 1 else f"{stem} {_PLACES[d[12] % len(_PLACES)]}"
        if d[13] < 128:
            tags["addr:street"] = _STREETS[d[14] % len(_STREETS)]
            tags["addr:housenumber"] = str(d[15] % 120 + 1)
        if d[16] < 100:
            tags["opening_hours"] = _HOURS[d[16] % len(_HOURS)]
        if d[17] < 40:
            tags["website"] = f"https://www.example.org/poi/{osm_id}"
    for extra_key, choices in _UNNAMED_EXTRAS.get(value, ()):
        tags[extra_key] = choices[d[18] % len(choices)]
    if value == "restaurant":
        tags["cuisine"] = _CUISINES[d[19] % len(_CUISINES)]
    elif value == "pharmacy":
        tags["healthcare"] = "pharmacy"
    elif value in ("supermarket", "fuel") and "name" in tags:
        tags["brand"] = tags["name"].split(" ")[0]
    elif value == "hotel":
        tags["stars"] = str(d[19] % 5 + 1)
    if kind == "way" and key in ("amenity", "shop") and d[20] < 160:
        tags["building"] = "yes"
    if d[21] < 50:
        tags["wheelchair"] = ("yes", "limited", "no")[d[22] % 3]
    return dict(sorted(tags.items()))


def _pois_in_box(box: Box) -> Iterator[Poi]:
    row_lo = max(0, (box.south + 900_000_000) // _CELL_E7)
    row_hi = min(_ROWS - 1, (box.north + 900_000_000) // _CELL_E7)
    for west, east in box.lon_ranges():
        col_lo = max(0, (west + 1_800_000_000) // _CELL_E7)
        col_hi = min(_COLS - 1, (east + 1_800_000_000) // _CELL_E7)
        for row in range(row_lo, row_hi + 1):
            for col in range(col_lo, col_hi + 1):
                poi = _poi_at(row, col)
                if poi is not None and box.south <= poi.lat_e7 <= box.north and west <= poi.lon_e7 <= east:
                    yield poi


def _cell_count(box: Box) -> int:
    rows = (box.north - box.south) // _CELL_E7 + 1
    return sum(rows * ((east - west) // _CELL_E7 + 1) for west, east in box.lon_ranges())


def find_pois(query: Query, limit: int | None = None) -> list[Poi] | None:
    """The union of every statement's matches, in Overpass order (nodes, ways, relations by id).

    Returns None when a box is too big to answer (the real server would run out of memory).
    """
    if any(_cell_count(s.box) > MAX_CELLS_PER_BOX for s in query.statements):
        return None
    in_box: dict[Box, list[Poi]] = {}
    found: dict[tuple[int, int], Poi] = {}
    for statement in query.statements:
        if statement.box not in in_box:
            in_box[statement.box] = list(_pois_in_box(statement.box))
        for poi in in_box[statement.box]:
            if statement.matches(poi):
                found[poi.sort_key()] = poi
    ordered = [found[key] for key in sorted(found)]
    return ordered if limit is None else ordered[:limit]


def candidates(query: Query) -> list[Poi] | None:
    """Every POI in any statement's box, whatever its tags, in Overpass order; None when a box is too big."""
    if any(_cell_count(s.box) > MAX_CELLS_PER_BOX for s in query.statements):
        return None
    found: dict[tuple[int, int], Poi] = {}
    for box in dict.fromkeys(statement.box for statement in query.statements):
        for poi in _pois_in_box(box):
            found[poi.sort_key()] = poi
    return [found[key] for key in sorted(found)]
