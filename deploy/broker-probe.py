#!/usr/bin/env python3
"""Does a Kafka-protocol broker answer a real request?

    deploy/broker-probe.py [HOST:PORT] [--timeout SECONDS] [--verbose]

Connects to HOST:PORT (default 127.0.0.1:9092), sends one Metadata request (API key 3,
version 1, topics null: all topics), and reads the complete framed response. Exits 0 when a
well-formed response with the request's correlation id and at least one broker arrives within
the timeout (default 3 s, for the whole exchange); otherwise exits 1 with a one-line reason on
stderr. A TCP connect alone is not enough: a wedged broker keeps listening and answers nothing.
With --verbose, prints what the broker reported on stdout.

Standard library only.
"""

import argparse
import os
import socket
import struct
import sys
import time

API_METADATA = 3
METADATA_VERSION = 1
CLIENT_ID = b"backbone-probe"
MAX_RESPONSE = 64 * 1024 * 1024


class ProbeError(Exception):
    pass


def metadata_request(correlation_id):
    # Request header v1: api_key int16, api_version int16, correlation_id int32,
    # client_id nullable string (int16 length + bytes). Metadata v1 body: topics array,
    # int32 length -1 (null) meaning every topic.
    body = struct.pack(">hhih", API_METADATA, METADATA_VERSION, correlation_id, len(CLIENT_ID))
    body += CLIENT_ID
    body += struct.pack(">i", -1)
    return struct.pack(">i", len(body)) + body


class Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, fmt):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ProbeError("malformed Metadata response: truncated at byte %d" % self.pos)
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def string(self, nullable=False):
        length = self.take(">h")
        if length < 0:
            if nullable:
                return None
            raise ProbeError("malformed Metadata response: null string at byte %d" % self.pos)
        if self.pos + length > len(self.data):
            raise ProbeError("malformed Metadata response: truncated string at byte %d" % self.pos)
        value = self.data[self.pos : self.pos + length].decode("utf-8", "replace")
        self.pos += length
        return value

    def array(self, item):
        count = self.take(">i")
        if count < 0:
            return []
        return [item() for _ in range(count)]


def parse_metadata_v1(payload):
    """payload: the response after the correlation id (response header v0)."""
    r = Reader(payload)

    def broker():
        node_id = r.take(">i")
        host = r.string()
        port = r.take(">i")
        r.string(nullable=True)  # rack
        return node_id, host, port

    def partition():
        r.take(">h")  # error code
        r.take(">i")  # partition index
        r.take(">i")  # leader
        r.array(lambda: r.take(">i"))  # replicas
        r.array(lambda: r.take(">i"))  # in-sync replicas

    def topic():
        error = r.take(">h")
        name = r.string()
        r.take(">b")  # is_internal
        r.array(partition)
        return name, error

    brokers = r.array(broker)
    controller = r.take(">i")
    topics = r.array(topic)
    if r.pos != len(payload):
        raise ProbeError(
            "malformed Metadata response: %d trailing bytes" % (len(payload) - r.pos)
        )
    return brokers, controller, topics


def recv_exactly(sock, count, deadline, what):
    chunks = []
    got = 0
    while got < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout()
        sock.settimeout(remaining)
        chunk = sock.recv(min(count - got, 65536))
        if not chunk:
            raise ProbeError(
                "connection closed by the broker after %d of %d %s bytes" % (got, count, what)
            )
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def probe(host, port, timeout):
    deadline = time.monotonic() + timeout
    correlation_id = struct.unpack(">i", os.urandom(4))[0] & 0x7FFFFFFF
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        raise ProbeError("connect to %s:%d timed out after %gs" % (host, port, timeout))
    except OSError as e:
        raise ProbeError("connect to %s:%d failed: %s" % (host, port, e.strerror or e))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            remaining = max(deadline - time.monotonic(), 0.001)
            sock.settimeout(remaining)
            sock.sendall(metadata_request(correlation_id))
            (size,) = struct.unpack(">i", recv_exactly(sock, 4, deadline, "size"))
            if size < 4 or size > MAX_RESPONSE:
                raise ProbeError("implausible response size %d" % size)
            frame = recv_exactly(sock, size, deadline, "response")
        except socket.timeout:
            raise ProbeError(
                "no complete Metadata response from %s:%d within %gs" % (host, port, timeout)
            )
        except OSError as e:
            raise ProbeError("talking to %s:%d failed: %s" % (host, port, e.strerror or e))
    finally:
        sock.close()
    (got_id,) = struct.unpack_from(">i", frame, 0)
    if got_id != correlation_id:
        raise ProbeError("correlation id %d in the response, sent %d" % (got_id, correlation_id))
    brokers, controller, topics = parse_metadata_v1(frame[4:])
    if not brokers:
        raise ProbeError("Metadata response lists no brokers")
    return brokers, controller, topics


def parse_address(text):
    text = text.split(",")[0].strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError("not HOST:PORT: %r" % text)
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError("port out of range: %r" % text)
    return host.strip("[]") or "127.0.0.1", number


def main(argv):
    parser = argparse.ArgumentParser(
        description="Exit 0 if a Kafka broker answers a Metadata request in time."
    )
    parser.add_argument(
        "address", nargs="?", default="127.0.0.1:9092", type=parse_address,
        help="HOST:PORT, or PORT on 127.0.0.1 (default 127.0.0.1:9092); a comma-separated "
        "bootstrap list probes its first entry",
    )
    parser.add_argument("--timeout", type=float, default=3.0,
                        help="seconds for connect, request and response together (default 3)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="print the brokers and topic count on success")
    args = parser.parse_args(argv)
    host, port = args.address
    try:
        brokers, controller, topics = probe(host, port, args.timeout)
    except ProbeError as e:
        print("broker-probe: %s" % e, file=sys.stderr)
        return 1
    if args.verbose:
        listed = ", ".join("%d@%s:%d" % b for b in brokers)
        print("%s:%d answered Metadata v%d: brokers %s, controller %d, %d topics"
              % (host, port, METADATA_VERSION, listed, controller, len(topics)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
