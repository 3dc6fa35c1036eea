"""The pipeline end to end (pipeline.feature), on the Redis broker and on RabbitMQ.

On RabbitMQ, ``make test`` runs the scenarios tagged ``@rabbitmq_fast``; the
others are marked chaos and soak (``make chaos``): see conftest.py.
"""

import pytest
from pytest_bdd import scenarios

# In every scenario's fixture closure, so that its params parametrise each one.
pytestmark = pytest.mark.usefixtures("broker_kind")

scenarios("pipeline.feature")


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)
