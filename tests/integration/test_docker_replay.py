"""The Dockerfile, without a Docker engine: its shape is checked, then its build and start steps are
replayed in fresh virtualenvs (pip wheel in a build venv, pip install from those wheels only in a run
venv; pip reaches PyPI), followed by what docs/production.md tells a container user to do: `init`,
`user add`, the ENTRYPOINT+CMD (`mailhaven serve`), the HEALTHCHECK command while it runs and after
SIGTERM (the STOPSIGNAL). Container paths map to folders of a temporary directory; the listeners move
to 127.0.0.1 on free ports (a container would publish the real ones).

Slow (a minute or two: pip builds and installs every dependency), and kept in CI. Skipped, with a
reason, when pip's package index (its configured index-url, PyPI by default) does not answer within
a few seconds: the replay cannot install anything without it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import poplib
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.test_service_support import (
    REPO,
    base_env,
    can_run_python_as,
    free_port,
    loopback_free_ports,
    open_dir,
    system_user,
)

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass
class Stage:
    base: str
    name: str = ""
    steps: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (INSTRUCTION, args, comments above)

    def all(self, instruction: str) -> list[str]:
        return [args for ins, args, _ in self.steps if ins == instruction]

    def one(self, instruction: str) -> str:
        [args] = self.all(instruction)
        return args


def parse_dockerfile(text: str) -> list[Stage]:
    stages: list[Stage] = []
    comments: list[str] = []
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and line.startswith("#"):
            comments.append(line.lstrip("# "))
            continue
        if not line and not logical:
            comments = []
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        logical += " " + line[:-1] if line.endswith("\\") else " " + line
        if line.endswith("\\"):
            continue
        instruction, _, args = logical.strip().partition(" ")
        instruction = instruction.upper()
        logical = ""
        if instruction == "FROM":
            base, _, name = args.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip()))
        else:
            stages[-1].steps.append((instruction, " ".join(args.split()), comments))
        comments = []
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


# --- shape ---------------------------------------------------------------------------------------


def test_dockerfile_builds_on_python_slim_and_runs_as_a_non_root_user(stages: list[Stage]) -> None:
    assert [s.base for s in stages] == ["python:3.11-slim", "python:3.11-slim"]
    final = stages[-1]
    assert final.one("USER") not in ("root", "0", "")
    assert exec_form(final.one("VOLUME")) == ["/etc/mailhaven", "/var/lib/mailhaven"]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(final.all("ENV"))))
    assert env["MAILHAVEN_CONFIG"] == "/etc/mailhaven/mailhaven.toml"
    assert exec_form(final.one("ENTRYPOINT")) == ["mailhaven"]
    assert exec_form(final.one("CMD")) == ["serve"]
    assert final.one("STOPSIGNAL") == "SIGTERM"


def test_every_mail_port_is_exposed_with_a_comment_saying_what_it_is(stages: list[Stage]) -> None:
    exposed = {int(args): comments for ins, args, comments in stages[-1].steps if ins == "EXPOSE"}
    assert set(exposed) == {25, 465, 587, 143, 993, 110, 995}
    for port, comments in exposed.items():
        assert comments and len(comments[-1]) > 10, f"EXPOSE {port} has no comment"


def test_healthcheck_runs_the_mailhaven_health_command(stages: list[Stage]) -> None:
    hc = stages[-1].one("HEALTHCHECK")
    options, _, command = hc.partition("CMD ")
    assert exec_form(command) == ["mailhaven", "health"]
    timeout = re.search(r"--timeout=(\d+)s", options)
    assert timeout and int(timeout.group(1)) > 5  # longer than one probe's own timeout


# --- the package index ---------------------------------------------------------------------------

PYPI = "https://pypi.org/simple/"


def _pip_config(key: str) -> str | None:
    """A setting as pip would take it: PIP_* in the environment, else pip's config files
    (`pip config list`: install, then global)."""
    r = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    found = dict(re.findall(rf"^([\w:.-]*)\.{re.escape(key)}='([^']*)'$", r.stdout, re.MULTILINE))
    for scope in (":env:", "install", "global"):
        if found.get(scope):
            return found[scope].split()[0]
    return None


def package_index() -> str:
    """The index pip would use here: its index-url, else PyPI."""
    return _pip_config("index-url") or PYPI


def index_unreachable(url: str, timeout: float = 5.0, cafile: str | None = None) -> str | None:
    """None when the index answers over HTTP (any status below 500), else why not. Credentials in
    the URL are not sent (and never shown): a reply of 401 still says the index is there. `cafile`:
    pip's `cert` setting, so TLS is checked as pip checks it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return None if Path(urllib.parse.unquote(parts.path)).is_dir() else f"{url}: no such folder"
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    shown = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    context = ssl.create_default_context(cafile=cafile) if parts.scheme == "https" else None
    try:
        with urllib.request.urlopen(urllib.request.Request(shown, method="HEAD"), timeout=timeout,
                                    context=context):
            return None
    except urllib.error.HTTPError as e:
        return None if e.code < 500 else f"{shown} answered {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return f"cannot reach {shown} within {timeout:g} s ({getattr(e, 'reason', e)})"


def test_index_probe_tells_a_closed_port_from_an_index_that_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The skip below is taken only when the index is really unreachable."""
    import http.server

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # straight to 127.0.0.1

    class Index(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(401 if self.headers.get("Authorization") is None else 200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert index_unreachable(f"http://user:secret@127.0.0.1:{server.server_port}/simple/") is None
    finally:
        server.shutdown()
        server.server_close()
    reason = index_unreachable(f"http://user:secret@127.0.0.1:{free_port()}/simple/", timeout=2)
    assert reason is not None and reason.startswith("cannot reach") and "secret" not in reason
    assert index_unreachable("file:///nonexistent-index/simple") == "file:///nonexistent-index/simple: no such folder"


# --- replay --------------------------------------------------------------------------------------


def dockerignore_admits(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern decides; "!" re-includes."""
    admitted = True
    for pat in patterns:
        negate = pat.startswith("!")
        p = pat.lstrip("!").rstrip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(pre, p) or fnmatch.fnmatch(pre, p.replace("**/", "*/")) for pre in prefixes):
            admitted = negate
    return admitted


def build_context(dest: Path) -> Path:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(".git/") or rel == ".git" or not path.is_file():
            continue
        if dockerignore_admits(rel, patterns):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return dest


class Replay:
    """Runs RUN/COPY steps of one stage with container paths mapped into `root`."""

    def __init__(self, root: Path, context: Path, venv: Path, mapping: dict[str, Path],
                 demote: Callable[[], None] | None) -> None:
        self.root, self.context, self.venv, self.mapping, self.demote = root, context, venv, mapping, demote
        self.workdir = root

    def path(self, container_path: str) -> Path:
        for prefix, local in sorted(self.mapping.items(), key=lambda kv: -len(kv[0])):
            if container_path == prefix or container_path.startswith(prefix + "/"):
                return local / container_path[len(prefix):].lstrip("/")
        raise AssertionError(f"no mapping for container path {container_path}")

    def map_args(self, words: list[str]) -> list[str]:
        return [str(self.path(w)) if w.startswith("/") else w for w in words]

    def step(self, instruction: str, args: str) -> None:
        if instruction == "WORKDIR":
            self.workdir = self.path(args)
            self.workdir.mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY" and not args.startswith("--from"):
            *sources, dest = args.split()
            target = self.workdir / dest if not dest.startswith("/") else self.path(dest)
            for src in sources:
                s = self.context / src
                if s.is_dir():
                    shutil.copytree(s, target if len(sources) == 1 and not dest.endswith("/") else target / src,
                                    dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(s, target / s.name)
        elif instruction == "RUN":
            for command in args.split("&&"):
                self.run(shlex.split(command))

    def run(self, words: list[str]) -> None:
        if words[0] == "pip":
            cmd = [str(self.venv / "bin" / "pip"), *self.map_args(words[1:])]
            r = subprocess.run(cmd, cwd=self.workdir, capture_output=True, text=True, timeout=900)
            assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        elif words[0] in ("groupadd", "useradd", "install") or words[:2] == ["rm", "-rf"]:
            pass  # the system user and its folders: the replay runs as a temporary system user instead
        else:
            raise AssertionError(f"the replay does not know RUN step {words!r}: teach it")


@pytest.fixture
def replay_user() -> Iterator[tuple[Callable[[], None] | None, int | None]]:
    """(preexec demote function, uid) for a temporary system user, or (None, None) to stay as we are."""
    if os.geteuid() != 0:
        yield None, None
        return
    with system_user("mhdock") as (name, uid, gid):
        if not can_run_python_as(uid, gid):
            yield None, None
            return

        def demote() -> None:
            os.initgroups(name, gid)
            os.setgid(gid)
            os.setuid(uid)

        yield demote, uid


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_replay_build_install_init_serve_and_healthcheck(
        stages: list[Stage], replay_user: tuple[Callable[[], None] | None, int | None]) -> None:
    unreachable = index_unreachable(package_index(), cafile=_pip_config("cert"))
    if unreachable:
        pytest.skip(f"pip's package index is unreachable, and the replay installs every dependency from it: "
                    f"{unreachable}")
    demote, uid = replay_user
    with open_dir("mailhaven-docker-") as root:
        context = build_context(root / "context")
        assert not (context / "tests").exists() and (context / "src" / "mailhaven" / "app.py").is_file()
        mapping = {"/src": root / "build-src", "/wheels": root / "wheels", "/etc/mailhaven": root / "etc-mailhaven",
                   "/var/lib/mailhaven": root / "var-lib-mailhaven"}
        build, final = stages
        # Build stage: a fresh venv stands in for the python image.
        subprocess.run([sys.executable, "-m", "venv", str(root / "build-venv")], check=True, timeout=300)
        rb = Replay(root, context, root / "build-venv", mapping, None)
        for instruction, args, _ in build.steps:
            rb.step(instruction, args)
        assert any(p.name.startswith("mailhaven-") for p in (root / "wheels").glob("*.whl"))
        # Run stage.
        subprocess.run([sys.executable, "-m", "venv", str(root / "run-venv")], check=True, timeout=300)
        rr = Replay(root, context, root / "run-venv", mapping, demote)
        for instruction, args, _ in final.steps:
            rr.step(instruction, args)
        exe = root / "run-venv" / "bin" / "mailhaven"
        assert exe.is_file()
        for folder in (mapping["/etc/mailhaven"], mapping["/var/lib/mailhaven"]):  # the volumes
            folder.mkdir(mode=0o700, exist_ok=True)
            folder.chmod(0o700)
        if uid is not None:
            import pwd

            pw = pwd.getpwuid(uid)
            for folder in (mapping["/etc/mailhaven"], mapping["/var/lib/mailhaven"]):
                os.chown(folder, pw.pw_uid, pw.pw_gid)
        env = base_env(MAILHAVEN_CONFIG=str(mapping["/etc/mailhaven"] / "mailhaven.toml"))
        env.pop("MAILHAVEN_FAST_HASH")
        env.pop("PYTHONPATH", None)
        cwd = mapping["/var/lib/mailhaven"]

        def mh(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(exe), *args], input=stdin, capture_output=True, text=True, timeout=120,
                                  env=env, cwd=cwd, preexec_fn=demote)

        r = mh("init", "--domain", "example.test", "--hostname", "mail.example.test",
               "--data-dir", str(mapping["/var/lib/mailhaven"]))
        assert r.returncode == 0, r.stderr
        config = mapping["/etc/mailhaven"] / "mailhaven.toml"
        ports = loopback_free_ports(config)
        r = mh("user", "add", "postmaster@example.test", stdin="Docker-Pass-1\n")
        assert r.returncode == 0, r.stderr
        entry = [*exec_form(final.one("ENTRYPOINT")), *exec_form(final.one("CMD"))]
        assert entry[0] == "mailhaven"
        health_cmd = exec_form(final.one("HEALTHCHECK").partition("CMD ")[2])
        server = subprocess.Popen([str(exe), *entry[1:]], env=env, cwd=cwd, preexec_fn=demote, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out = _wait_ready(server)
            r = mh(*health_cmd[1:])
            assert r.returncode == 0, r.stdout + r.stderr + "".join(out)
            assert len(r.stdout.splitlines()) == len(ports)
            tls = ssl.create_default_context()
            tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
            box = poplib.POP3_SSL("127.0.0.1", ports["pop3s"], context=tls, timeout=10)
            box.user("postmaster@example.test")
            box.pass_("Docker-Pass-1")
            assert box.stat() == (0, 0)
            box.quit()
            server.send_signal(getattr(signal, final.one("STOPSIGNAL")))
            assert server.wait(timeout=60) == 0
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        assert mh(*health_cmd[1:], "--timeout", "2").returncode == 1
        for p in [*mapping["/var/lib/mailhaven"].rglob("*"), mapping["/etc/mailhaven"] / "users.toml",
                  mapping["/etc/mailhaven"] / "tls" / "key.pem"]:
            assert p.stat().st_mode & 0o007 == 0, p
            if uid is not None:
                assert p.stat().st_uid == uid, p


def _wait_ready(server: subprocess.Popen[str]) -> list[str]:
    """Block until the log says ready; keep draining the log in a thread afterwards."""
    assert server.stdout is not None
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert server.stdout is not None
        for line in server.stdout:
            lines.append(line)
            if re.search(r"ready: \d+ listener", line):
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    ready.wait(120)
    assert any("ready: " in line for line in lines), "server not ready:\n" + "".join(lines)
    return lines
