"""The conformance suite, shipped so that any adapter runs it against its own backend:

    pip install 'mqkit[testing]' your-adapter
    pytest --pyargs mqkit.testing --mqkit-url=yourscheme://host:port

The tests read what a backend guarantees from ``broker.features`` instead of skipping by name.
:mod:`mqkit.testing.util` holds the receive helpers the tests share, for an adapter's own tests.
:class:`TestClient` runs an application's handlers on ``memory://`` inside a test.
Importing this package needs no pytest; running the suite does (the ``testing`` extra).
"""

from mqkit.testing.client import TestClient

__all__ = ["TestClient"]
