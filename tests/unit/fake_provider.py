"""A ProviderLink on an in-memory transport, fed the way asyncio's SSL layer feeds it.

For tests of the relay's provider side without sockets, TLS or a provider: the link itself is the
real one, only its transport is fake.
"""

from gateway.imap_proxy.provider_link import ProviderLink

__all__ = ["FakeTransport", "provider_link", "provider_sends"]


class FakeTransport:
    """The provider's side of a ProviderLink: records writes; ``pause_writing`` is up to the test."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.reading = True
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


def provider_link() -> ProviderLink:
    link = ProviderLink()
    link.connection_made(FakeTransport())
    return link


def provider_sends(link: ProviderLink, data: bytes) -> None:
    """What asyncio's SSL layer does: decrypt into the link's buffer, then tell it how much."""
    if not data:
        link.eof_received()
        link.connection_lost(None)
        return
    while data:
        buf = link.get_buffer(len(data))
        n = min(len(buf), len(data))
        buf[:n] = data[:n]
        data = data[n:]
        link.buffer_updated(n)
