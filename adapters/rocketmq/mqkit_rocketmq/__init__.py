"""mqkit backend for Apache RocketMQ: two URL schemes, two drivers, each imported only when used.

* ``rocketmq://[access_key:secret_key@]host:8081[/namespace]`` — RocketMQ 5.x through its gRPC
  proxy, with Apache's pure-Python client (``pip install 'mqkit-rocketmq[grpc]'``):
  :mod:`mqkit_rocketmq.backend` and its ``settings``, ``wire``, ``producer``, ``consumer``.
* ``rocketmq+remoting://[access_key:secret_key@]namesrv:9876`` — RocketMQ 4.x (and 5.x) through
  the name server and the remoting protocol, with the native ``librocketmq`` behind Apache's
  ctypes binding (``pip install 'mqkit-rocketmq[remoting]'`` plus the native library) or the
  third-party wheel that bundles one (``pip install 'mqkit-rocketmq[remoting-bundled]'``):
  :mod:`mqkit_rocketmq.remoting.backend` and the same files beside it.

Both client distributions install a top-level package named ``rocketmq``; one environment holds
one of them, so this package imports neither driver. :mod:`mqkit_rocketmq._drivers` tells which
client is installed and says exactly what to install or remove when the needed one is missing.
:mod:`mqkit_rocketmq.admin` creates topics and groups and positions new groups (both drivers).
"""
