"""Send a job spec to a running Ray cluster through Ray's Job Submission API.

    iwp-annotate submit SPEC.yaml --address http://HEAD:8265 [--env AWS_ACCESS_KEY_ID ...]
    iwp-annotate status JOB_ID --address http://HEAD:8265 [--wait]
    iwp-annotate logs JOB_ID --address http://HEAD:8265 [--follow]
    iwp-annotate stop JOB_ID --address http://HEAD:8265 [--wait]

The spec is validated here first. The job's entrypoint is `iwp-annotate run job.yaml`; its
runtime_env `working_dir` is a fresh directory holding only the spec, renamed job.yaml, so
the spec travels with the job and nothing else from this machine does. Environment variables
reach the job only when named with `--env NAME`, and their values are read from this
process's environment at submit time, never from the spec.

`stop` makes Ray's job supervisor send the driver SIGTERM, which the run treats as a
preemption (finish cleanly within the spec's `grace_period_s`, exit 143; a rerun resumes).
The supervisor SIGKILLs the driver after `RAY_JOB_STOP_WAIT_TIME_S` (Ray's default: 3 s),
so every submission sets that to the grace period plus a margin.

The cluster must have `iwp-annotate` on PATH (the project image does). With Ray token
authentication on, set RAY_AUTH_MODE=token here and keep the token where Ray looks for it
(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from jobs.spec import JobSpec, SpecError, parse_spec, read_spec_bytes

SUBMIT_COMMANDS = ("submit", "status", "logs", "stop")
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
SPEC_NAME_IN_JOB = "job.yaml"
ENTRYPOINT = f"iwp-annotate run {SPEC_NAME_IN_JOB}"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
STOP_WAIT_ENV = "RAY_JOB_STOP_WAIT_TIME_S"
STOP_WAIT_MARGIN_S = 5


class SubmitError(ValueError):
    """The job cannot be submitted as asked (before anything reaches the cluster)."""


@dataclass(frozen=True)
class Submission:
    """Everything `submit` sends, decided locally before the cluster is contacted."""

    spec: JobSpec
    spec_bytes: bytes
    entrypoint: str
    env_vars: dict[str, str] = field(repr=False)  # values may be secrets
    metadata: dict[str, str]
    submission_id: str

    def runtime_env_vars(self) -> dict[str, str]:
        """What the job's processes get: the stop wait (see the module docstring), then the named variables."""
        stop_wait = str(math.ceil(self.spec.grace_period_s) + STOP_WAIT_MARGIN_S)
        return {STOP_WAIT_ENV: stop_wait, **self.env_vars}


def _check_paths(spec: JobSpec) -> None:
    """Relative local paths would resolve inside the job's temporary working directory."""
    problems = [
        f"{where}: relative path {value!r} would resolve inside the job's working directory on the cluster; "
        "use an absolute path or a URI"
        for where, value in (("input", spec.input), ("output", spec.output.path), ("model.path", spec.model.path))
        if "://" not in value and not os.path.isabs(value)
    ]
    if problems:
        raise SpecError("job spec cannot be submitted:\n  " + "\n  ".join(problems), problems)


def _env_vars(names: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    bad = [n for n in names if not _ENV_NAME.match(n)]
    if bad:
        raise SubmitError(f"--env takes variable names, not {bad}; values are read from this environment")
    missing = [n for n in names if n not in environ]
    if missing:
        raise SubmitError(f"--env {', '.join(missing)}: not set in this environment")
    return {n: environ[n] for n in dict.fromkeys(names)}


def prepare_submission(spec_path: str, *, env_names: Sequence[str] = (), entrypoint_prefix: str = "",
                       environ: Mapping[str, str] | None = None) -> Submission:
    """Validate the spec and assemble the submission; raises SpecError or SubmitError."""
    data = read_spec_bytes(spec_path)
    spec = parse_spec(data, str(spec_path))
    _check_paths(spec)
    env_vars = _env_vars(env_names, os.environ if environ is None else environ)
    entrypoint = f"{entrypoint_prefix.strip()} {ENTRYPOINT}" if entrypoint_prefix.strip() else ENTRYPOINT
    return Submission(
        spec=spec,
        spec_bytes=data,
        entrypoint=entrypoint,
        env_vars=env_vars,
        metadata={"iwp-annotate/name": spec.name, "iwp-annotate/task": spec.task.kind},
        submission_id=f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}",
    )


def _client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def submit(spec_path: str, address: str | None, *, env_names: Sequence[str] = (), entrypoint_prefix: str = "",
           agent_wait_s: float = 60.0) -> str:
    """Validate `spec_path` and submit it as a Ray job; returns the job (submission) id."""
    sub = prepare_submission(spec_path, env_names=env_names, entrypoint_prefix=entrypoint_prefix)
    client = _client(address)
    workdir = tempfile.mkdtemp(prefix="iwp-annotate-job-")
    try:
        with open(os.path.join(workdir, SPEC_NAME_IN_JOB), "wb") as f:
            f.write(sub.spec_bytes)
        runtime_env: dict = {"working_dir": workdir, "env_vars": sub.runtime_env_vars()}
        # submit_job packs and uploads working_dir before it returns. A cluster that has just
        # started may not have a job agent yet; Ray then refuses and asks to try again.
        deadline = time.monotonic() + agent_wait_s
        while True:
            try:
                return client.submit_job(entrypoint=sub.entrypoint, runtime_env=runtime_env,
                                         metadata=sub.metadata, submission_id=sub.submission_id)
            except RuntimeError as exc:
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(2)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def status(job_id: str, address: str | None) -> str:
    """The job's status: PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
    return str(_client(address).get_job_status(job_id).value)


def stop(job_id: str, address: str | None) -> bool:
    """Ask the cluster to stop the job (SIGTERM to its driver); False if it had already ended."""
    return bool(_client(address).stop_job(job_id))


def wait(job_id: str, address: str | None, *, timeout_s: float | None = None, poll_s: float = 2.0) -> str:
    """Poll until the job reaches SUCCEEDED, FAILED or STOPPED; returns that status."""
    client = _client(address)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        state = str(client.get_job_status(job_id).value)
        if state in TERMINAL_STATUSES:
            return state
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {state} after {timeout_s:g} s")
        time.sleep(poll_s)


def _follow(client, job_id: str) -> Iterator[str]:
    loop = asyncio.new_event_loop()
    chunks = client.tail_job_logs(job_id)
    try:
        while True:
            try:
                yield loop.run_until_complete(chunks.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(chunks.aclose())
        loop.close()


def logs(job_id: str, address: str | None, follow: bool = False) -> str | Iterator[str]:
    """The job's driver output so far (str), or with follow=True an iterator of chunks that
    ends when the job does."""
    client = _client(address)
    if follow:
        return _follow(client, job_id)
    return client.get_job_logs(job_id)


# ---- command line --------------------------------------------------------------------------


def _address_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray dashboard (job API) address, e.g. http://HEAD:8265 "
                        "(default: $RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS)")


def add_submit_commands(subparsers) -> None:
    """Add `submit`, `status`, `logs` and `stop` to an argparse sub-command set (dest 'command')."""
    p = subparsers.add_parser("submit", help="validate a job spec and submit it to a Ray cluster")
    p.add_argument("spec", help="job spec YAML (local path or pyarrow URI)")
    _address_option(p)
    p.add_argument("--env", action="append", default=[], metavar="NAME",
                   help="pass this environment variable (value from here, at submit time) to the job; repeatable")
    p.add_argument("--entrypoint-prefix", default="",
                   help=f"shell words put before '{ENTRYPOINT}' in the job's entrypoint")
    p.add_argument("--wait", action="store_true", help="wait for the job to finish; exit 0 only if it SUCCEEDED")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")

    p = subparsers.add_parser("status", help="print a submitted job's status")
    p.add_argument("job_id")
    _address_option(p)
    p.add_argument("--wait", action="store_true", help="wait for the job to finish; exit 0 only if it SUCCEEDED")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")

    p = subparsers.add_parser("logs", help="print a submitted job's output")
    p.add_argument("job_id")
    _address_option(p)
    p.add_argument("--follow", action="store_true", help="keep printing until the job finishes")

    p = subparsers.add_parser("stop", help="stop a submitted job: its driver gets SIGTERM and stops cleanly")
    p.add_argument("job_id")
    _address_option(p)
    p.add_argument("--wait", action="store_true", help="wait until the job has ended; print its final status")
    p.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")


def _finish(job_id: str, address: str | None, timeout: float | None) -> int:
    state = wait(job_id, address, timeout_s=timeout)
    print(state, flush=True)
    if state != "SUCCEEDED":
        message = _client(address).get_job_info(job_id).message
        if message:
            print(f"iwp-annotate: job {job_id} {state}: {message}", file=sys.stderr)
        return 1
    return 0


def run_submit_command(args: argparse.Namespace) -> int:
    """Run `submit`, `status`, `logs` or `stop` from parsed arguments; returns the exit code
    (0 ok; 1 job did not succeed, with --wait; 2 refused or the cluster could not be asked)."""
    try:
        if args.command == "submit":
            job_id = submit(args.spec, args.address, env_names=args.env, entrypoint_prefix=args.entrypoint_prefix)
            print(job_id, flush=True)
            if args.wait:
                return _finish(job_id, args.address, args.timeout)
            print(f"follow it with: iwp-annotate logs {job_id} --follow"
                  + (f" --address {args.address}" if args.address else ""), file=sys.stderr)
            return 0
        if args.command == "status":
            if args.wait:
                return _finish(args.job_id, args.address, args.timeout)
            print(status(args.job_id, args.address))
            return 0
        if args.command == "logs":
            out = logs(args.job_id, args.address, follow=args.follow)
            for chunk in [out] if isinstance(out, str) else out:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            return 0
        if args.command == "stop":
            if not stop(args.job_id, args.address):
                print(f"iwp-annotate: job {args.job_id} had already ended", file=sys.stderr)
            if args.wait:
                print(wait(args.job_id, args.address, timeout_s=args.timeout), flush=True)
            return 0
        raise ValueError(f"not a submit command: {args.command!r}")
    except (SpecError, SubmitError, TimeoutError) as exc:
        print(f"iwp-annotate: error: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, RuntimeError) as exc:  # unreachable cluster, unknown job id, HTTP errors
        print(f"iwp-annotate: error: {args.command}: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.submit ...`: the same commands without the rest of the CLI."""
    p = argparse.ArgumentParser(prog="iwp-annotate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_submit_commands(p.add_subparsers(dest="command", required=True))
    return run_submit_command(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
