"""A real S3 API server on loopback (moto's standalone server) for tests and benchmarks, and a
TCP relay in front of it that can be cut, so an endpoint can go down and come back mid-run."""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs

from tests.support.cluster import free_port

ACCESS_KEY, SECRET_KEY = "iwp-test-key", "iwp-test-secret"


class S3Server:
    """`python -m moto.server` on 127.0.0.1; everything it stores lives in its memory."""

    def __init__(self, log: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        out = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the S3 server did not start (exit {self.proc.poll()})") from None
                time.sleep(0.2)

    def env(self, endpoint: str | None = None, key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> dict[str, str]:
        """The standard variables a job reads its credentials and endpoint from."""
        return {"AWS_ENDPOINT_URL": endpoint or self.endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def filesystem(self) -> pafs.S3FileSystem:
        """An admin client that may create buckets (jobs never do)."""
        return pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region="us-east-1",
                                 endpoint_override=self.endpoint, scheme="http", allow_bucket_creation=True)

    def bucket(self, name: str) -> str:
        self.filesystem().create_dir(name)
        return f"s3://{name}"

    def upload(self, local: Path | str, uri: str) -> str:
        path = uri.removeprefix("s3://")
        with open(local, "rb") as src, self.filesystem().open_output_stream(path) as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)
        return uri

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)


class Relay:
    """Forwards 127.0.0.1:`port` to `target_port`; `down()` closes the listener and every open
    connection (clients see refused connections), `up()` listens on the same port again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bytes_to_client = 0
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            listener.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, server)
        sel.register(server, selectors.EVENT_READ, client)
        try:
            while True:
                for key, _ in sel.select():
                    data = key.fileobj.recv(1 << 16)
                    if not data:
                        return
                    key.data.sendall(data)
                    if key.fileobj is server:
                        self.bytes_to_client += len(data)
        except OSError:
            return
        finally:
            sel.close()
            client.close()
            server.close()
