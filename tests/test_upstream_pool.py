"""The upstream pool's asyncio network backend, against real sockets on 127.0.0.1 (TLS with a certificate made here).

The HTTP behaviour through it (streaming, reuse, cuts, hangs, malformed chunks, disconnects) is covered by
`test_openai_client.py` and `test_faults.py` against the fake upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpcore2
import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from llm.upstream_pool import HIGH_WATER, AsyncioBackend, AsyncioStream


class Server:
    """A TCP server that keeps each accepted connection's reader and writer for the test to drive."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.StreamReader] = []
        self.port = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.readers.append(reader)
        self.writers.append(writer)

    async def peer(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        for _ in range(500):
            if self.writers:
                return self.readers[-1], self.writers[-1]
            await asyncio.sleep(0.01)
        raise TimeoutError("no connection accepted")


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Server]:
    state = Server()
    listener = await asyncio.start_server(state._accept, "127.0.0.1", 0)
    state.port = listener.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        for writer in state.writers:
            writer.close()
        listener.close()


Runner = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=[asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Runs a test's scenario on asyncio's own loop, then on uvloop, which the service runs on."""
    return request.param  # type: ignore[no-any-return]


async def connect(server: Server) -> AsyncioStream:
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", server.port, timeout=5)
    assert isinstance(stream, AsyncioStream)
    return stream


def test_bytes_both_ways_and_the_end_of_stream(run: Runner) -> None:
    async def scenario() -> None:
        async with serving() as server:
            stream = await connect(server)
            reader, writer = await server.peer()
            await stream.write(b"request", timeout=5)
            assert await reader.readexactly(7) == b"request"
            writer.write(b"0123456789")
            await writer.drain()
            assert await stream.read(4, timeout=5) == b"0123"  # at most what was asked, the rest kept
            assert await stream.read(100, timeout=5) == b"456789"
            writer.close()
            assert await stream.read(100, timeout=5) == b""
            assert stream.get_extra_info("is_readable") is True  # the pool would drop it
            await stream.aclose()

    run(scenario())


def test_the_connection_is_closed_when_aclose_returns(run: Runner) -> None:
    async def scenario() -> None:
        with socket.create_server(("127.0.0.1", 0)) as server:
            stream = await AsyncioBackend().connect_tcp("127.0.0.1", server.getsockname()[1], timeout=5)
            peer, _ = server.accept()
            with peer:
                await stream.aclose()
                peer.settimeout(2)  # a blocking read: the loop does not run again before it answers
                assert peer.recv(10) == b""

    run(scenario())


def test_a_silent_server_is_a_read_timeout(run: Runner) -> None:
    async def scenario() -> None:
        async with serving() as server:
            stream = await connect(server)
            with pytest.raises(httpcore2.ReadTimeout):
                await stream.read(100, timeout=0.2)
            assert stream.get_extra_info("is_readable") is False  # idle and open: reusable
            await stream.aclose()

    run(scenario())


def test_a_reset_connection_is_a_read_error(run: Runner) -> None:
    async def scenario() -> None:
        async with serving() as server:
            stream = await connect(server)
            _, writer = await server.peer()
            raw = writer.get_extra_info("socket")
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
            writer.transport.abort()
            with pytest.raises((httpcore2.ReadError, httpcore2.ReadTimeout)) as info:
                while True:
                    if await stream.read(100, timeout=5) == b"":
                        pytest.fail("a reset read as a clean end of stream")
            assert info.type is httpcore2.ReadError
            with pytest.raises(httpcore2.WriteError):
                await stream.write(b"more", timeout=5)

    run(scenario())


def test_nobody_listening_is_a_connect_error(run: Runner) -> None:
    async def scenario() -> None:
        with socket.socket() as placeholder:
            placeholder.bind(("127.0.0.1", 0))
            port = placeholder.getsockname()[1]
        with pytest.raises(httpcore2.ConnectError):
            await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)

    run(scenario())


def test_an_unread_stream_holds_the_sender_back(run: Runner) -> None:
    """A reader that stops reading pauses the socket: the buffer stays bounded and TCP pushes back on the server."""

    async def scenario() -> None:
        async with serving() as server:
            stream = await connect(server)
            _, writer = await server.peer()
            payload = b"x" * (32 * 1024 * 1024)  # more than the kernel buffers on both sides hold
            writer.write(payload)
            drain = asyncio.create_task(writer.drain())
            await asyncio.sleep(0.5)
            assert stream._protocol.buffered <= HIGH_WATER + 256 * 1024  # one read's worth over the mark at most
            assert not drain.done()  # the server is held back
            received = 0
            while received < len(payload):
                received += len(await stream.read(65536, timeout=5))
            await asyncio.wait_for(drain, 5)
            assert received == len(payload)
            await stream.aclose()

    run(scenario())


def make_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream.test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("upstream.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls_through_start_tls(run: Runner, tmp_path: Path) -> None:
    async def scenario() -> None:
        cert, key = make_certificate(tmp_path)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)
        client_context = ssl.create_default_context(cafile=str(cert))

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()

        listener = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_context)
        port = listener.sockets[0].getsockname()[1]
        try:
            plain = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
            stream = await plain.start_tls(client_context, server_hostname="upstream.test", timeout=5)
            assert stream.get_extra_info("ssl_object") is not None
            await stream.write(b"hello", timeout=5)
            assert await stream.read(100, timeout=5) == b"hello"
            await stream.aclose()

            plain = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
            with pytest.raises(httpcore2.ConnectError):  # the certificate is not for this name
                await plain.start_tls(client_context, server_hostname="elsewhere.test", timeout=5)
        finally:
            listener.close()

    run(scenario())
