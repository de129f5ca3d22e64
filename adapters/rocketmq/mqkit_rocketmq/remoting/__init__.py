"""``rocketmq+remoting://`` — RocketMQ through the name server and the remoting protocol (RocketMQ
4.x, and 5.x brokers, which still speak it), with the native ``librocketmq`` through ctypes.

The same skeleton as the ``rocketmq://`` driver: ``settings``, ``wire``, ``producer``,
``consumer``, ``backend`` (the entry point); ``_native`` declares the C API. Importing this
package loads nothing; :mod:`.backend` loads the native library.
"""
