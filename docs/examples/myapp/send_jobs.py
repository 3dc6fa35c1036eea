"""App code that sends jobs: two charges of its own and, unless ``MYAPP_ENRICHMENT=off``, an enrichment job.

``python send_jobs.py`` prints one line per job sent. Sending an ``enrich``
job needs only where the product's queue is (``BROKER``, ``REDIS_URL`` or
``RABBITMQ_URL``; with ``MYAPP_ENRICHMENT=install``, the app's own broker),
none of the product's worker settings. A job is checked before it is sent:
``enrich.check`` raises ``InvalidJob`` with a one-line reason.
"""

from __future__ import annotations

import sys

from myapp_tasks import ENRICHMENT, charge

#: Where the shop wants its surroundings' points of interest (Overpass order: south, west, north, east).
NEIGHBOURHOOD = {"bbox": {"south": 48.85, "west": 2.29, "north": 48.86, "east": 2.30}, "tags": ["amenity"]}
#: A job typed wrong: south above north.
TYPO = {"bbox": {"south": 48.86, "west": 2.29, "north": 48.85, "east": 2.30}, "tags": ["amenity"]}


def main() -> int:
    print("charge", charge.send(1, 2).message_id)  # declined twice, then paid
    print("charge", charge.send(2, 9).message_id)  # declined every time: dead-lettered
    if ENRICHMENT == "off":
        return 0
    from enrichment_actors import InvalidJob, enrich

    try:
        enrich.check(**TYPO)
    except InvalidJob as exc:
        print(f"not sent: {exc}")
    enrich.check(**NEIGHBOURHOOD)
    print("enrich", enrich.send(**NEIGHBOURHOOD).message_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
