"""RocketMQ through the name server and the 4.x remoting protocol (``rocketmq+remoting://``,
the native librocketmq of ``mqkit-rocketmq[remoting-bundled]``): ``adapters/rocketmq/ci/broker
start`` sets the URL, the name server of the same Apache RocketMQ 5 cluster as
``rocketmq.py``'s, with ``auto_create``.

The 4.x client installs a package ``rocketmq``, as does the 5.x client of the main virtualenv,
so this backend has a test run of its own: ``scripts/test`` runs the conformance suite and
``tests/rocketmq/test_rocketmq_remoting.py`` in ``.venv-remoting`` with
``MQKIT_TEST_RUN=remoting``; the main run deselects them.
"""

from __future__ import annotations

ENV = "MQKIT_TEST_ROCKETMQ_REMOTING_URL"
RUN = "remoting"
