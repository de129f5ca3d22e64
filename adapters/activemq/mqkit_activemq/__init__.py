"""ActiveMQ Classic adapter for mqkit: ``stomp://`` and ``stomp+ssl://`` URLs, over stomp.py."""

from mqkit_activemq.backend import Backend

__all__ = ["Backend"]
