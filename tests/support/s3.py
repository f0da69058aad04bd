"""A real S3 API server on loopback (moto's standalone server) for tests and benchmarks, and a
TCP relay in front of it that can be cut, so an endpoint can go down and come back mid-run."""

from __future__ import annotations

import json
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
FORBIDDEN = "forbidden"  # with `checked_access`, the job's key may not read objects under */forbidden/


class S3Server:
    """`python -m moto.server` on 127.0.0.1; everything it stores lives in its memory.

    Without `checked_access` any key is accepted. With it, requests are signed and checked as
    AWS does: `admin` may do anything, the job's key (`env()`) anything but read */forbidden/*,
    which the server answers with 403 AccessDenied.
    """

    def __init__(self, log: Path | None = None, checked_access: bool = False) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        out = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=out, stderr=subprocess.STDOUT)
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
        self.admin = self.job = (ACCESS_KEY, SECRET_KEY)
        if checked_access:
            self._check_access()

    def _check_access(self) -> None:
        import boto3

        iam = boto3.client("iam", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                           aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
        allow = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        deny = {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::*/{FORBIDDEN}/*"}
        keys = []
        for user, statements in (("admin", [allow]), ("job", [allow, deny])):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": statements}))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys.append((key["AccessKeyId"], key["SecretAccessKey"]))
        self.admin, self.job = keys
        request = urllib.request.Request(self.endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
                                         headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).close()

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The standard variables a job reads its credentials and endpoint from."""
        key, secret = self.job
        return {"AWS_ENDPOINT_URL": endpoint or self.endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def filesystem(self) -> pafs.S3FileSystem:
        """An admin client that may create buckets (jobs never do)."""
        key, secret = self.admin
        return pafs.S3FileSystem(access_key=key, secret_key=secret, region="us-east-1",
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
