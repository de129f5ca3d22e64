"""The conformance suite, shipped so that any adapter runs it against its own backend:

    pip install 'mqkit[testing]' your-adapter
    pytest --pyargs mqkit.testing --mqkit-url=yourscheme://host:port

The tests read what a backend guarantees from ``broker.features`` instead of skipping by name.
:mod:`mqkit.testing.util` holds the receive helpers the tests share, for an adapter's own tests.
Importing this package needs no pytest; running the suite does (the ``testing`` extra).
"""
