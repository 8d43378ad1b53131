"""The Git LFS test rig: a real LFS server (giftless) over a real S3 (moto server).

Loaded as a pytest plugin by tests/conftest.py. Fixtures:

``lfs_server`` (session)
    giftless with the ``basic_external`` adapter and ``AmazonS3Storage`` on moto,
    handing out SigV4 presigned hrefs. Both listen only on this machine's own
    non-loopback IPv4 address, because git-lfs never uses a proxy for loopback
    targets. moto sits behind a recorder, so tests can count the requests that
    reached the store (``store_gets``, ``count_store_gets``).

``lfs_repo`` (function)
    a bare git repo whose ``.lfsconfig`` points ``lfs.url`` at giftless, with
    LFS objects of random bytes pushed through git-lfs directly (no proxy).
    ``make_lfs_repo`` is the factory behind it, for other sizes.

Tests that use them are marked ``lfs`` automatically. The rig's own
virtualenv (.venv-lfs) is installed by scripts/lfs-rig-install (cached by a
stamp). If the rig cannot be installed or started, its tests are skipped
with one loud reason; set DAMSELFLY_REQUIRE_LFS=1 to make that a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.support.ports import free_port, non_loopback_ipv4
from tests.support.procs import ManagedProcess, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
RIG_INSTALL = REPO_ROOT / "scripts" / "lfs-rig-install"
SERVE = Path(__file__).resolve().parent / "support" / "lfs_serve.py"
RECORDER_PATH = "/__rig/requests"  # kept equal to lfs_serve.RECORDER_PATH
BUCKET = "damselfly-lfs"
MiB = 1024 * 1024
DEFAULT_SIZES = (2 * MiB, 3 * MiB, 4 * MiB, 20 * MiB)
INSTALL_TIMEOUT = 900.0
START_TIMEOUT = 60.0
GIT_TIMEOUT = 300.0

# Talking to the rig directly never goes through a proxy, whatever the environment says.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# moto checks no signatures, but treats requests without one as anonymous (no DELETE);
# a SigV4-shaped header makes the rig's own bucket and cleanup calls "signed".
_S3_AUTH = {
    "Authorization": "AWS4-HMAC-SHA256 Credential=damselfly-rig/20260101/us-east-1/s3/"
    "aws4_request, SignedHeaders=host, Signature=" + "0" * 64
}
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _unavailable(reason: str) -> NoReturn:
    message = f"GIT LFS RIG UNAVAILABLE: {reason}"
    if os.environ.get("DAMSELFLY_REQUIRE_LFS"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _direct_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without proxy variables (any case), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    env.update(extra or {})
    return env


def _http_answers(url: str) -> Callable[[], bool]:
    """A check for wait_until: does anything answer HTTP at ``url`` (any status)?"""

    def check() -> bool:
        try:
            with _DIRECT.open(url, timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, OSError):
            return False

    return check


def run_git(
    args: Sequence[str],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = GIT_TIMEOUT,
) -> str:
    """Run ``git *args``; return stdout, or fail with everything git said."""
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"git {' '.join(args)} failed ({result.returncode}) in {cwd}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def git_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for git with its own HOME: global config isolated, no proxy.

    The first call for a ``home`` writes its ~/.gitconfig: an identity, branch
    ``main``, the git-lfs filters (``git lfs install --skip-repo``) and no lock
    verification (giftless has no locking API). GIT_SSL_CAINFO and the rest of
    the environment are kept; proxy variables are dropped.
    """
    home.mkdir(parents=True, exist_ok=True)
    env = _direct_env(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_LFS_SKIP_SMUDGE": "0",
        }
    )
    gitconfig = home / ".gitconfig"
    if not gitconfig.exists():
        gitconfig.write_text(
            "[user]\n\tname = Damselfly Tests\n\temail = tests@damselfly.invalid\n"
            "[init]\n\tdefaultBranch = main\n"
            "[lfs]\n\tlocksverify = false\n"
            "[advice]\n\tdetachedHead = false\n"
        )
        run_git(["lfs", "install", "--skip-repo"], env=env, cwd=home)
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class StoreRequest:
    """One request that reached moto (the S3 store), as the recorder saw it."""

    seq: int
    time: float
    method: str
    path: str  # path-style: /<bucket>/<key>
    query: str
    range: str | None
    status: int | None
    bytes_sent: int
    done: bool

    @property
    def key(self) -> str:
        """The object key (empty for bucket-level requests)."""
        parts = self.path.lstrip("/").split("/", 1)
        return parts[1] if len(parts) == 2 else ""


@dataclass
class LfsServer:
    """giftless + moto, running; see the module docstring."""

    ip: str
    url: str  # giftless base URL, http://<ip>:<port>
    moto_url: str  # moto (S3) base URL, http://<ip>:<port>
    bucket: str
    rig_python: Path
    log_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)

    def lfs_url(self, org: str, repo: str) -> str:
        """The LFS endpoint of a repository (``lfs.url``); batch is under /objects/batch."""
        return f"{self.url}/{org}/{repo}.git/info/lfs"

    def store_requests(self) -> list[StoreRequest]:
        """Every request that reached moto so far, in arrival order."""
        with _DIRECT.open(self.moto_url + RECORDER_PATH, timeout=10) as resp:
            rows: list[dict[str, Any]] = json.load(resp)
        return [StoreRequest(**row) for row in rows]

    def store_gets(self, oids: str | Sequence[str] | None = None) -> list[StoreRequest]:
        """GETs of objects (not bucket listings) that reached moto, optionally of ``oids``."""
        wanted = {oids} if isinstance(oids, str) else set(oids) if oids is not None else None
        gets = []
        for req in self.store_requests():
            if req.method != "GET" or not req.path.startswith(f"/{self.bucket}/") or not req.key:
                continue
            if wanted is not None and req.key.rsplit("/", 1)[-1] not in wanted:
                continue
            gets.append(req)
        return gets

    def count_store_gets(self, oids: str | Sequence[str] | None = None) -> int:
        """How many object GETs reached the store (optionally only for ``oids``)."""
        return len(self.store_gets(oids))

    def batch(
        self,
        lfs_url: str,
        objects: Sequence[tuple[str, int]],
        operation: str = "download",
    ) -> dict[str, Any]:
        """POST a Git LFS batch request directly (no proxy) and return the JSON answer."""
        body = json.dumps(
            {
                "operation": operation,
                "transfers": ["basic"],
                "objects": [{"oid": oid, "size": size} for oid, size in objects],
            }
        ).encode()
        request = urllib.request.Request(
            lfs_url + "/objects/batch",
            data=body,
            method="POST",
            headers={
                "Accept": "application/vnd.git-lfs+json",
                "Content-Type": "application/vnd.git-lfs+json",
            },
        )
        with _DIRECT.open(request, timeout=30) as resp:
            answer: dict[str, Any] = json.load(resp)
        return answer

    def delete_objects(self, org: str, repo: str, oids: Sequence[str]) -> None:
        """Remove objects from the store (moto keeps them in memory or temp files)."""
        for oid in oids:
            request = urllib.request.Request(
                f"{self.moto_url}/{self.bucket}/{org}/{repo}/{oid}",
                method="DELETE",
                headers=_S3_AUTH,
            )
            with _DIRECT.open(request, timeout=10):
                pass

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} (pid {p.pid})\n{p.log_tail()}" for p in self.processes)


@dataclass(frozen=True)
class LfsFile:
    """A file tracked by LFS in an ``LfsRepo``: its path in the tree, sha256 (= oid), size."""

    name: str
    sha256: str
    size: int

    @property
    def oid(self) -> str:
        return self.sha256


@dataclass
class LfsRepo:
    """A bare repo with LFS objects on the rig's giftless; see ``make_lfs_repo``."""

    path: Path  # the bare repository; `git clone <path>` works
    org: str
    name: str
    lfs_url: str
    files: list[LfsFile]
    home: Path  # HOME with the git config used to create it
    env: dict[str, str]  # git environment (isolated HOME, no proxy)
    server: LfsServer

    @property
    def url(self) -> str:
        return str(self.path)

    @property
    def oids(self) -> list[str]:
        return [f.oid for f in self.files]

    @property
    def sha256s(self) -> dict[str, str]:
        return {f.name: f.sha256 for f in self.files}

    def clone(
        self,
        dest: Path,
        config: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        smudge: bool = False,
        timeout: float = GIT_TIMEOUT,
    ) -> Path:
        """Clone into ``dest`` and fetch the LFS objects; returns ``dest``.

        ``config`` entries are passed as ``git -c key=value`` to both steps (e.g.
        ``{"http.proxy": "http://ip:port"}``); ``env`` is added to ``self.env``.
        With ``smudge=False`` (default) the clone skips LFS and ``git lfs pull``
        fetches the objects; with ``smudge=True`` the clone's checkout does.
        """
        flags = [arg for k, v in (config or {}).items() for arg in ("-c", f"{k}={v}")]
        run_env = dict(self.env)
        run_env.update(env or {})
        run_env["GIT_LFS_SKIP_SMUDGE"] = "0" if smudge else "1"
        run_git([*flags, "clone", "-q", self.url, str(dest)], env=run_env, timeout=timeout)
        if not smudge:
            run_env["GIT_LFS_SKIP_SMUDGE"] = "0"
            run_git([*flags, "lfs", "pull"], cwd=dest, env=run_env, timeout=timeout)
        return dest

    def verify(self, worktree: Path) -> None:
        """Assert every LFS file in ``worktree`` has its real content (size and sha256)."""
        for f in self.files:
            target = worktree / f.name
            size = target.stat().st_size
            assert size == f.size, f"{f.name}: {size} bytes, expected {f.size} (still a pointer?)"
            assert _sha256_file(target) == f.sha256, f"{f.name}: sha256 differs"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def _start_rig(log_dir: Path) -> LfsServer:
    if shutil.which("git") is None:
        _unavailable("git is not installed")
    try:
        install = subprocess.run(
            [str(RIG_INSTALL)],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"{RIG_INSTALL.name} took longer than {INSTALL_TIMEOUT:.0f}s")
    if install.returncode != 0:
        _unavailable(f"{RIG_INSTALL.name} failed:\n{install.stderr[-3000:]}")
    if shutil.which("git-lfs") is None:
        _unavailable("git-lfs is not installed (Debian package git-lfs)")
    rig_python = Path(install.stdout.strip().splitlines()[-1])

    ip = non_loopback_ipv4()
    if ip is None:
        _unavailable("no non-loopback IPv4 address here (git-lfs never proxies loopback)")

    server = LfsServer(
        ip=ip,
        url="",
        moto_url="",
        bucket=BUCKET,
        rig_python=rig_python,
        log_dir=log_dir,
    )
    try:
        moto_port = free_port(ip)
        server.moto_url = f"http://{ip}:{moto_port}"
        aws_config = log_dir / "aws-config"
        aws_config.write_text(
            "[default]\ns3 =\n    signature_version = s3v4\n    addressing_style = path\n"
        )
        aws_env = {
            "AWS_CONFIG_FILE": str(aws_config),
            "AWS_SHARED_CREDENTIALS_FILE": str(log_dir / "aws-credentials-none"),
            "AWS_ACCESS_KEY_ID": "damselfly-rig",
            "AWS_SECRET_ACCESS_KEY": "damselfly-rig-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "*",
            "PYTHONUNBUFFERED": "1",
        }
        moto = ManagedProcess(
            "moto",
            [str(rig_python), str(SERVE), "moto", "--host", ip, "--port", str(moto_port)],
            log_dir,
            env=_direct_env(aws_env),
        )
        server.processes.append(moto)
        wait_until(
            _http_answers(server.moto_url + RECORDER_PATH), START_TIMEOUT, "moto server", proc=moto
        )
        create = urllib.request.Request(
            f"{server.moto_url}/{BUCKET}", method="PUT", headers=_S3_AUTH
        )
        with _DIRECT.open(create, timeout=10) as resp:
            assert resp.status == 200, f"creating bucket {BUCKET}: HTTP {resp.status}"

        giftless_port = free_port(ip)
        server.url = f"http://{ip}:{giftless_port}"
        config = log_dir / "giftless.yaml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "AUTH_PROVIDERS": ["giftless.auth.allow_anon:read_write"],
                    "LEGACY_ENDPOINTS": False,
                    "TRANSFER_ADAPTERS": {
                        "basic": {
                            "factory": "giftless.transfer.basic_external:factory",
                            "options": {
                                "storage_class": "giftless.storage.amazon_s3:AmazonS3Storage",
                                "storage_options": {
                                    "bucket_name": BUCKET,
                                    "endpoint": server.moto_url,
                                },
                                "action_lifetime": 900,
                            },
                        }
                    },
                    "PRE_AUTHORIZED_ACTION_PROVIDER": {
                        "options": {"private_key": uuid.uuid4().hex + uuid.uuid4().hex}
                    },
                },
                indent=2,
            )
        )
        giftless = ManagedProcess(
            "giftless",
            [
                str(rig_python),
                str(SERVE),
                "giftless",
                "--host",
                ip,
                "--port",
                str(giftless_port),
                "--config",
                str(config),
            ],
            log_dir,
            env=_direct_env(aws_env),
        )
        server.processes.append(giftless)
        wait_until(_http_answers(server.url + "/"), START_TIMEOUT, "giftless", proc=giftless)
    except BaseException:
        for proc in reversed(server.processes):
            proc.stop()
        raise
    return server


@pytest.fixture(scope="session")
def lfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LfsServer]:
    """giftless + moto on this machine's own IP, bucket created; stopped after the session."""
    server = _start_rig(tmp_path_factory.mktemp("lfs-rig"))
    try:
        yield server
    finally:
        for proc in reversed(server.processes):
            proc.stop()


MakeLfsRepo = Callable[..., LfsRepo]


@pytest.fixture
def make_lfs_repo(
    lfs_server: LfsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MakeLfsRepo]:
    """Factory: ``make_lfs_repo(sizes=(...), name=None) -> LfsRepo`` (fresh random objects)."""
    made: list[LfsRepo] = []

    def make(sizes: Sequence[int] = DEFAULT_SIZES, name: str | None = None) -> LfsRepo:
        root = tmp_path_factory.mktemp("lfs-repo")
        org, repo_name = "damselfly", name or f"rig-{uuid.uuid4().hex[:10]}"
        lfs_url = lfs_server.lfs_url(org, repo_name)
        home = root / "home"
        env = git_env(home)
        work = root / "work"
        bare = root / f"{repo_name}.git"
        run_git(["init", "-q", "-b", "main", str(work)], env=env)
        run_git(["init", "-q", "--bare", str(bare)], env=env)
        (work / ".lfsconfig").write_text(f'[lfs]\n\turl = "{lfs_url}"\n')
        (work / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
        files = []
        for index, size in enumerate(sizes):
            fname = f"object-{index}-{size}.bin"
            data = os.urandom(size)
            (work / fname).write_bytes(data)
            files.append(LfsFile(fname, hashlib.sha256(data).hexdigest(), size))
        (work / "README.md").write_text(f"LFS rig repository {repo_name}\n")
        run_git(["add", "-A"], cwd=work, env=env)
        run_git(["commit", "-q", "-m", "LFS objects"], cwd=work, env=env)
        pointers = run_git(["lfs", "ls-files", "-l"], cwd=work, env=env)
        for f in files:
            assert f.oid in pointers, f"{f.name} is not an LFS pointer:\n{pointers}"
        run_git(["remote", "add", "origin", str(bare)], cwd=work, env=env)
        run_git(["lfs", "push", "origin", "main"], cwd=work, env=env)
        run_git(["push", "-q", "origin", "main"], cwd=work, env=env)
        repo = LfsRepo(
            path=bare,
            org=org,
            name=repo_name,
            lfs_url=lfs_url,
            files=files,
            home=home,
            env=env,
            server=lfs_server,
        )
        made.append(repo)
        return repo

    yield make
    for repo in made:
        shutil.rmtree(repo.path.parent, ignore_errors=True)
        lfs_server.delete_objects(repo.org, repo.name, repo.oids)


@pytest.fixture
def lfs_repo(make_lfs_repo: MakeLfsRepo) -> LfsRepo:
    """A bare repo with 2, 3, 4 and 20 MiB LFS objects (random bytes) on the rig."""
    return make_lfs_repo()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "lfs_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.lfs)
