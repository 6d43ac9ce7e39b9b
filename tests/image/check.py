#!/usr/bin/env python3
"""Checks the runtime image deploy/image/build writes (an OCI archive), with the stdlib only.

    tests/image/check.py [ARCHIVE]          the whole check (default target/image/flyte-auth-agent.oci.tar)
    tests/image/check.py --static FILE...   refuses a dynamically linked ELF (the build script's gate)

What it proves, in order:
- the archive is a well-formed OCI image: every blob matches its digest and size, the layers'
  uncompressed digests match the config's diff_ids;
- the config: user 65532:65532, entrypoint /usr/local/bin/flyte-auth-agent and no command,
  working directory /home/nonroot, the OCI labels (version, source and licenses equal to the
  workspace's Cargo.toml);
- the root filesystem (layers applied with their whiteouts): no shell, and no executable but the
  two binaries, both static (no PT_INTERP, no DT_NEEDED: parsed here, not by `file`); user and
  group 65532 with home /home/nonroot, distroless's directories (owners and modes), the CA bundle;
- the binaries run from the unpacked root filesystem, chrooted, as the image's user, in a network
  namespace of their own (nothing leaves the machine): both `--version` (name and version),
  `flyte-auth-injector check` on deploy/base/config.yaml, the agent's `check` on a pod's
  configuration, and the agent's `serve --once` minting one token through a name only the root
  filesystem's /etc/hosts knows and one through a name only a DNS server (a stub on 127.0.0.1:53,
  named by the root filesystem's /etc/resolv.conf) knows: static glibc resolves both, /etc/hosts
  first; the injector's `init-certs` writes a CA and serving certificate, `serve` answers /healthz
  over TLS verified for the Service's name, and exits 0 on SIGTERM. /dev gets the devices an OCI
  runtime creates, and /etc/hosts and /etc/resolv.conf what the kubelet mounts.
It prints the sizes: archive, compressed layers, unpacked root filesystem, each binary.

The run needs root (chroot, a network namespace, device nodes); without it the check fails saying so.
Python >= 3.11.4 (tomllib, tarfile's extraction filters), the stdlib only.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import gzip
import hashlib
import http.server
import io
import json
import os
import posixpath
import queue
import shutil
import signal
import socket
import socketserver
import ssl
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ARCHIVE = ROOT / "target/image/flyte-auth-agent.oci.tar"

AGENT = "usr/local/bin/flyte-auth-agent"
INJECTOR = "usr/local/bin/flyte-auth-injector"
BINARIES = (AGENT, INJECTOR)
USER = "65532:65532"
ENTRYPOINT = ["/" + AGENT]
HOME = "home/nonroot"
# Directories as distroless static's nonroot image has them: (uid, gid, mode).
DIRS = {"tmp": (0, 0, 0o1777), "root": (0, 0, 0o700), "home": (0, 0, 0o755), HOME: (65532, 65532, 0o700)}
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
# Named for a clear message; the executable census below refuses any other program as well.
SHELLS = {"sh", "bash", "ash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "busybox", "toybox"}

# Names the name-resolution proof uses. `.test` is reserved (RFC 6761): never a real host.
HOSTS_NAME = "idp-hosts.image-check.test"
DNS_NAME = "idp-dns.image-check.test"

LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": None,
    "application/vnd.oci.image.layer.v1.tar+gzip": gzip.decompress,
}


class Failed(Exception):
    """The image does not hold what it must; the message names what and where."""


# ---- ELF -------------------------------------------------------------------------------------

PT_DYNAMIC, PT_INTERP = 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB = 0, 1, 5


@dataclass
class Linking:
    """How an ELF file is linked: its program interpreter and the libraries it needs."""

    interp: str | None
    needed: list[str]

    @property
    def static(self) -> bool:
        return self.interp is None and not self.needed


def elf_linking(data: bytes, name: str) -> Linking:
    """Reads PT_INTERP and DT_NEEDED of a little-endian ELF64 file (x86-64 is all we build)."""
    if data[:4] != b"\x7fELF":
        raise Failed(f"{name}: not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise Failed(f"{name}: not a little-endian ELF64 file")
    (e_type, e_machine) = struct.unpack_from("<HH", data, 16)
    if e_machine != 62:
        raise Failed(f"{name}: ELF machine {e_machine}, not x86-64 (62)")
    (e_phoff,) = struct.unpack_from("<Q", data, 32)
    (e_phentsize, e_phnum) = struct.unpack_from("<HH", data, 54)
    segments = []
    for i in range(e_phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, e_phoff + i * e_phentsize
        )
        segments.append((p_type, p_offset, p_vaddr, p_filesz))
    interp = None
    needed: list[str] = []
    for p_type, off, _vaddr, size in segments:
        if p_type == PT_INTERP:
            interp = data[off : off + size].rstrip(b"\0").decode(errors="replace")
        if p_type == PT_DYNAMIC:
            entries = [struct.unpack_from("<qQ", data, off + i) for i in range(0, size, 16)]
            strtab = next((v for t, v in entries if t == DT_STRTAB), None)
            names = [v for t, v in entries if t == DT_NEEDED]
            if names and strtab is not None:
                # DT_STRTAB is a virtual address: find the loaded segment holding it.
                base = next(
                    o - va for t, o, va, sz in segments if t == 1 and va <= strtab < va + sz
                )
                for v in names:
                    start = strtab + base + v
                    needed.append(data[start : data.index(b"\0", start)].decode(errors="replace"))
            elif names:
                needed.extend(f"<name at {v}>" for v in names)
    return Linking(interp, needed)


def require_static(data: bytes, name: str) -> None:
    linking = elf_linking(data, name)
    if not linking.static:
        raise Failed(
            f"{name} is dynamically linked (interpreter {linking.interp}, needs "
            f"{', '.join(linking.needed) or 'nothing'}); the image has no libc"
        )


# ---- OCI archive -----------------------------------------------------------------------------


@dataclass
class Image:
    archive: Path
    manifest: dict
    config: dict
    layers: list[bytes]  # uncompressed tar streams, in order
    compressed: int  # bytes of the layer blobs as stored


def read_archive(path: Path) -> Image:
    if not path.is_file():
        raise Failed(f"{path}: no such archive (build it with deploy/image/build)")
    with tarfile.open(path) as tar:
        files = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}

        def read(name: str) -> bytes:
            if name not in files:
                raise Failed(f"{path}: {name} is missing")
            return tar.extractfile(files[name]).read()

        def blob(desc: dict, what: str) -> bytes:
            algo, _, hexd = desc["digest"].partition(":")
            if algo != "sha256":
                raise Failed(f"{what}: digest algorithm {algo!r}, expected sha256")
            data = read(f"blobs/sha256/{hexd}")
            if hashlib.sha256(data).hexdigest() != hexd:
                raise Failed(f"{what}: blob does not match its digest {desc['digest']}")
            if len(data) != desc["size"]:
                raise Failed(f"{what}: blob is {len(data)} bytes, its descriptor says {desc['size']}")
            return data

        layout = json.loads(read("oci-layout"))
        if layout.get("imageLayoutVersion") != "1.0.0":
            raise Failed(f"{path}: oci-layout {layout}, expected imageLayoutVersion 1.0.0")
        index = json.loads(read("index.json"))
        if len(index.get("manifests", [])) != 1:
            raise Failed(f"{path}: index.json lists {len(index.get('manifests', []))} manifests, expected 1")
        manifest = json.loads(blob(index["manifests"][0], "manifest"))
        config = json.loads(blob(manifest["config"], "config"))
        diff_ids = config.get("rootfs", {}).get("diff_ids", [])
        if len(diff_ids) != len(manifest["layers"]):
            raise Failed(f"config lists {len(diff_ids)} diff_ids for {len(manifest['layers'])} layers")
        layers, compressed = [], 0
        for i, (desc, diff_id) in enumerate(zip(manifest["layers"], diff_ids)):
            media = desc["mediaType"]
            if media not in LAYER_TYPES:
                raise Failed(f"layer {i}: media type {media} not handled")
            raw = blob(desc, f"layer {i}")
            compressed += len(raw)
            data = LAYER_TYPES[media](raw) if LAYER_TYPES[media] else raw
            if "sha256:" + hashlib.sha256(data).hexdigest() != diff_id:
                raise Failed(f"layer {i}: uncompressed content does not match diff_id {diff_id}")
            layers.append(data)
    return Image(path, manifest, config, layers, compressed)


def normalize(name: str) -> str:
    """A layer entry's path relative to the root; `..` cannot climb above it."""
    return posixpath.normpath("/" + name).lstrip("/") or "."


def unpack(image: Image, dest: Path) -> dict[str, tarfile.TarInfo]:
    """Applies the layers to `dest` (whiteouts included); returns the final entries by path."""
    entries: dict[str, tarfile.TarInfo] = {}
    for data in image.layers:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
            for m in members:
                path = normalize(m.name)
                parent, base = posixpath.split(path)
                if base == ".wh..wh..opq":
                    for p in [p for p in entries if p.startswith(parent + "/")]:
                        del entries[p]
                    shutil.rmtree(dest / parent, ignore_errors=True)
                    (dest / parent).mkdir(parents=True, exist_ok=True)
                elif base.startswith(".wh."):
                    gone = posixpath.join(parent, base[len(".wh.") :])
                    for p in [p for p in entries if p == gone or p.startswith(gone + "/")]:
                        del entries[p]
                    target = dest / gone
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    elif target.exists() or target.is_symlink():
                        target.unlink()
            for m in members:
                path = normalize(m.name)
                if path == "." or posixpath.basename(path).startswith(".wh."):
                    continue
                if not (m.isfile() or m.isdir()):
                    # The image holds none, so nothing here can point the check (or the chrooted
                    # binaries) at the build machine's files.
                    raise Failed(f"layer entry /{path} is a link or device; only files and directories expected")
                out = dest / path
                if out.is_file():
                    out.unlink()
                m.name = path
                # Extracted as is (paths normalized, no links): owners and modes (1777 /tmp,
                # 65532's home) stay the image's, which the run as 65532 depends on.
                tar.extract(m, dest, filter="fully_trusted")
                entries[path] = m
    return entries


# ---- the image's configuration and files -----------------------------------------------------


@dataclass
class Expected:
    version: str
    source: str
    licenses: str


def workspace_expected() -> Expected:
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())
    agent = tomllib.loads((ROOT / "agent/Cargo.toml").read_text())
    package = workspace["workspace"]["package"]
    return Expected(agent["package"]["version"], package["repository"], package["license"])


def check_config(image: Image, expected: Expected) -> None:
    cfg = image.config.get("config", {})
    if image.config.get("architecture") != "amd64" or image.config.get("os") != "linux":
        raise Failed(f"platform {image.config.get('os')}/{image.config.get('architecture')}, expected linux/amd64")
    if cfg.get("User") != USER:
        raise Failed(f"the image runs as user {cfg.get('User')!r}, expected {USER!r} (distroless nonroot)")
    if cfg.get("Entrypoint") != ENTRYPOINT:
        raise Failed(f"entrypoint {cfg.get('Entrypoint')}, expected {ENTRYPOINT}")
    if cfg.get("WorkingDir") != "/" + HOME:
        raise Failed(f"working directory {cfg.get('WorkingDir')!r}, expected '/{HOME}' (distroless nonroot)")
    if cfg.get("Cmd"):
        raise Failed(f"the image has a default command {cfg['Cmd']}; the injector passes the agent's args")
    labels = cfg.get("Labels") or {}
    for key, want in [
        ("org.opencontainers.image.version", expected.version),
        ("org.opencontainers.image.source", expected.source),
        ("org.opencontainers.image.licenses", expected.licenses),
    ]:
        if labels.get(key) != want:
            raise Failed(f"label {key} is {labels.get(key)!r}, expected {want!r} (Cargo.toml)")


def passwd_entry(rootfs: Path, file: str, uid: str) -> list[str]:
    path = rootfs / "etc" / file
    if not path.is_file():
        raise Failed(f"/etc/{file} is missing")
    for line in path.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2] == uid:
            return fields
    raise Failed(f"/etc/{file} has no entry with id {uid}")


def check_files(rootfs: Path, entries: dict[str, tarfile.TarInfo]) -> None:
    for path in entries:
        if posixpath.basename(path) in SHELLS:
            raise Failed(f"the image has a shell: /{path}")
    executables = sorted(p for p, m in entries.items() if m.isfile() and m.mode & 0o111)
    if executables != sorted(BINARIES):
        raise Failed(f"executables {['/' + p for p in executables]}, expected only the two binaries")
    for b in BINARIES:
        require_static((rootfs / b).read_bytes(), "/" + b)
    uid, gid = USER.split(":")
    user = passwd_entry(rootfs, "passwd", uid)
    if user[3] != gid or user[5] != "/" + HOME:
        raise Failed(f"/etc/passwd entry {':'.join(user)}: expected group {gid}, home /{HOME}")
    passwd_entry(rootfs, "group", gid)
    for path, (duid, dgid, mode) in DIRS.items():
        d = entries.get(path)
        want = f"a directory of {duid}:{dgid} with mode {oct(mode)}"
        if d is None or not d.isdir():
            raise Failed(f"/{path} is missing or not a directory; expected {want}")
        if (d.uid, d.gid, stat.S_IMODE(d.mode)) != (duid, dgid, mode):
            raise Failed(f"/{path} is {d.uid}:{d.gid} {oct(stat.S_IMODE(d.mode))}, expected {want}")
    bundle = rootfs / CA_BUNDLE
    if not bundle.is_file() or b"-----BEGIN CERTIFICATE-----" not in bundle.read_bytes():
        raise Failed(f"/{CA_BUNDLE} is missing or holds no PEM certificate")


# ---- running the binaries from the root filesystem -------------------------------------------


def enter_network_namespace() -> None:
    """A network namespace of our own with only loopback up: the stubs below own 127.0.0.1:53."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        err = ctypes.get_errno()
        raise Failed(f"unshare(CLONE_NEWNET): {os.strerror(err)}: the run needs root")
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(s, siocgifflags, req))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def dns_answer(query: bytes, names: dict[str, str]) -> tuple[str, int, bytes]:
    """A minimal authoritative answer: A records for `names`, NXDOMAIN for anything else."""
    qid, flags = struct.unpack_from(">HH", query)
    i, labels = 12, []
    while query[i]:
        labels.append(query[i + 1 : i + 1 + query[i]].decode())
        i += 1 + query[i]
    qtype = struct.unpack_from(">H", query, i + 1)[0]
    question = query[12 : i + 5]
    name = ".".join(labels).lower()
    answers = b""
    count = 0
    rcode = 0 if name in names else 3
    if rcode == 0 and qtype == 1:
        answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(names[name])
        count = 1
    head = struct.pack(">HHHHHH", qid, 0x8400 | (flags & 0x0100) | 0x0080 | rcode, 1, count, 0, 0)
    return name, qtype, head + question + answers


@dataclass
class Stubs:
    """A DNS server on 127.0.0.1:53 and an IdP token endpoint, recording what they were asked."""

    dns_names: dict[str, str]
    queries: list[tuple[str, int]] = field(default_factory=list)
    token_hosts: list[str] = field(default_factory=list)

    def start(self) -> int:
        stubs = self

        class Dns(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                query, sock = self.request
                name, qtype, reply = dns_answer(query, stubs.dns_names)
                stubs.queries.append((name, qtype))
                sock.sendto(reply, self.client_address)

        self._dns = socketserver.UDPServer(("127.0.0.1", 53), Dns)


        class Token(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                host = self.headers.get("Host", "").rsplit(":", 1)[0]
                stubs.token_hosts.append(host)
                body = json.dumps(
                    {"access_token": f"image-check.{host}", "token_type": "Bearer", "expires_in": 3600}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Token)
        for target in (self._dns.serve_forever, self._http.serve_forever):
            threading.Thread(target=target, daemon=True).start()
        return self._http.server_address[1]

    def stop(self) -> None:
        for server in (self._http, self._dns):
            server.shutdown()
            server.server_close()


def run_in(rootfs: Path, argv: list[str], env: dict[str, str], what: str) -> tuple[int, str]:
    """Runs argv chrooted into rootfs as the image's user, with only `env`: (exit code, output)."""
    chroot = shutil.which("chroot")
    if chroot is None:
        raise Failed("chroot (coreutils) is not on PATH")
    cmd = [chroot, f"--userspec={USER}", "--groups=", str(rootfs), *argv]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise Failed(f"{what}: no exit within 60 s") from None
    return done.returncode, done.stdout + done.stderr


def run_ok(rootfs: Path, argv: list[str], env: dict[str, str], what: str) -> str:
    code, out = run_in(rootfs, argv, env, what)
    if code != 0:
        raise Failed(f"{what}: exit {code}:\n{out}")
    return out


# The devices every OCI runtime creates in a container's /dev (runtime-spec "Default Devices").
# The agent needs /dev/urandom: in a static glibc binary dlsym() finds no getrandom(), so the
# getrandom crate (ring's and rand's randomness) reads the file instead of calling getrandom(2).
DEVICES = {"null": 3, "zero": 5, "full": 7, "random": 8, "urandom": 9}


def make_devices(rootfs: Path) -> None:
    dev = rootfs / "dev"
    dev.mkdir(exist_ok=True)
    for name, minor in DEVICES.items():
        os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
        os.chmod(dev / name, 0o666)


def prepare_pod(rootfs: Path, port: int) -> tuple[dict[str, str], Path]:
    """What the kubelet and the injector give the agent: /etc/hosts, /etc/resolv.conf, a client
    secret, the token requests; the agent's writable directory is under the image's /tmp."""
    (rootfs / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.0.1 {HOSTS_NAME}\n")
    (rootfs / "etc/resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
    uid, gid = (int(x) for x in USER.split(":"))
    pod = rootfs / "tmp/image-check"
    secret = pod / "secrets/image-check/client_secret"
    secret.parent.mkdir(parents=True)
    secret.write_text("image-check-secret\n")
    for p in (pod, pod / "secrets", secret.parent, secret):
        os.chown(p, uid, gid)
    requests = [
        {
            "name": name,
            "type": "CLIENT_CREDENTIALS",
            "client": {
                "clientId": "image-check",
                "clientSecret": {"group": "image-check", "key": "client_secret", "mountRequirement": "FILE"},
            },
            "tokenEndpoint": f"http://{host}:{port}/token",
        }
        for name, host in (("via-hosts", HOSTS_NAME), ("via-dns", DNS_NAME))
    ]
    env = {
        "FLYTE_TOKENS_PATH_PREFIX": "/tmp/image-check/tokens",
        "FLYTE_AUTH_AGENT_SOCKET": "/tmp/image-check/run/agent.sock",
        "FLYTE_SECRETS_DEFAULT_DIR": "/tmp/image-check/secrets",
        "FLYTE_AUTH_AGENT_HEALTH_ADDR": "127.0.0.1:0",
        "FLYTE_AUTH_AGENT_TOKEN_REQUESTS": json.dumps(requests),
        # The stub is plain http on a name, not on a loopback literal.
        "FLYTE_AUTH_AGENT_ALLOW_INSECURE_HTTP": "true",
        "FLYTE_AUTH_AGENT_IDP_TIMEOUT": "5s",
    }
    return env, pod


def check_run(rootfs: Path, expected: Expected) -> list[str]:
    """Runs the binaries from the root filesystem; returns what that showed."""
    make_devices(rootfs)
    for binary in ("/" + AGENT, "/" + INJECTOR):
        out = run_ok(rootfs, [binary, "--version"], {}, f"{binary} --version").strip()
        if out != f"{posixpath.basename(binary)} {expected.version}":
            raise Failed(f"{binary} --version printed {out!r}, expected its name and version {expected.version}")
    shutil.copy(ROOT / "deploy/base/config.yaml", rootfs / "tmp/injector-config.yaml")
    run_ok(rootfs, ["/" + INJECTOR, "check", "--config", "/tmp/injector-config.yaml"], {}, "flyte-auth-injector check")
    enter_network_namespace()
    return check_agent_once(rootfs) + check_webhook(rootfs)


def check_agent_once(rootfs: Path) -> list[str]:
    """The agent's `check`, then `serve --once` through a name from /etc/hosts and one from DNS."""
    agent = "/" + AGENT
    stubs = Stubs({DNS_NAME: "127.0.0.1"})
    port = stubs.start()
    try:
        env, pod = prepare_pod(rootfs, port)
        (pod / "agent.yaml").write_text("{}\n")
        run_ok(rootfs, [agent, "check", "--config", "/tmp/image-check/agent.yaml"], env, "flyte-auth-agent check")
        if stubs.token_hosts or stubs.queries:
            raise Failed(f"flyte-auth-agent check reached the network: {stubs.queries} {stubs.token_hosts}")
        # Exit code checked last: which name failed to resolve, and how, is the better message.
        code, out = run_in(rootfs, [agent, "serve", "--once", "--once-timeout", "10s"], env, "serve --once")
    finally:
        stubs.stop()
    asked = {name for name, _ in stubs.queries}
    if HOSTS_NAME in asked:
        raise Failed(f"{HOSTS_NAME} is in /etc/hosts but was asked of DNS: /etc/hosts is not read first\n{out}")
    if DNS_NAME not in asked:
        raise Failed(f"{DNS_NAME} was not asked of the DNS server /etc/resolv.conf names: {stubs.queries}\n{out}")
    for name, host in (("via-hosts", HOSTS_NAME), ("via-dns", DNS_NAME)):
        token = pod / "tokens" / name
        if not token.is_file() or token.read_text().strip() != f"image-check.{host}":
            raise Failed(f"no token through {host} (token file {name})\n{out}")
    if set(stubs.token_hosts) != {HOSTS_NAME, DNS_NAME}:
        raise Failed(f"the token endpoint saw hosts {sorted(set(stubs.token_hosts))}")
    if code != 0:
        raise Failed(f"flyte-auth-agent serve --once: exit {code} with both tokens written:\n{out}")
    types = {1: "A", 28: "AAAA"}
    return [
        f"ran from the root filesystem as {USER}: both --version, both check, agent serve --once",
        f"{HOSTS_NAME}: from /etc/hosts, DNS not asked",
        f"{DNS_NAME}: from the DNS stub, asked "
        + ", ".join(sorted({types.get(t, str(t)) for n, t in stubs.queries if n == DNS_NAME})),
    ]


SERVING = "serving AdmissionReviews on HTTPS address="


def check_webhook(rootfs: Path) -> list[str]:
    """`init-certs` writes a CA and serving certificate, `serve` answers /healthz over TLS with
    it (verified for the Service's name), and SIGTERM stops it with exit 0."""
    injector = "/" + INJECTOR
    certs = "/tmp/image-check/certs"
    run_ok(rootfs, [injector, "init-certs", "--cert-dir", certs, "--namespace", "flyte"], {}, "init-certs")
    config = "/tmp/image-check/injector.yaml"
    (rootfs / config.lstrip("/")).write_text(
        f"server:\n  listen: 127.0.0.1:0\n  cert_file: {certs}/tls.crt\n  key_file: {certs}/tls.key\n"
    )
    cmd = [shutil.which("chroot"), f"--userspec={USER}", "--groups=", str(rootfs), injector, "serve", "--config", config]
    proc = subprocess.Popen(cmd, env={}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        while not any(SERVING in line for line in seen):
            try:
                line = lines.get(timeout=30)
            except queue.Empty:
                raise Failed("flyte-auth-injector serve: not serving within 30 s:\n" + "".join(seen)) from None
            if line is None:
                raise Failed(f"flyte-auth-injector serve exited {proc.wait()}:\n" + "".join(seen))
            seen.append(line)
        address = next(line for line in seen if SERVING in line).split(SERVING)[1].split()[0]
        host, port = address.rsplit(":", 1)
        tls = ssl.create_default_context(cafile=str(rootfs / certs.lstrip("/") / "ca.crt"))
        name = "flyte-auth-injector.flyte.svc"
        try:
            with socket.create_connection((host, int(port)), timeout=10) as raw:
                with tls.wrap_socket(raw, server_hostname=name) as conn:
                    conn.sendall(f"GET /healthz HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
                    answer = b"".join(iter(lambda: conn.recv(4096), b"")).decode(errors="replace")
        except OSError as e:  # ssl.SSLError included
            raise Failed(f"flyte-auth-injector /healthz over TLS as {name}: {e}") from None
        if not answer.startswith("HTTP/1.1 200") or not answer.endswith("ok\n"):
            raise Failed(f"flyte-auth-injector /healthz answered {answer!r}")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        if code != 0:
            raise Failed(f"flyte-auth-injector serve: exit {code} on SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)  # the pipe's end follows the exit
        proc.stdout.close()
    return [f"flyte-auth-injector: init-certs, then /healthz over TLS verified as {name}, exit 0 on SIGTERM"]


# ---- main ------------------------------------------------------------------------------------


def mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB ({n} bytes)"


def check(archive: Path, run: bool = True) -> list[str]:
    """The whole check; returns the figures to print, raises Failed on the first problem."""
    expected = workspace_expected()
    image = read_archive(archive)
    check_config(image, expected)
    with tempfile.TemporaryDirectory(prefix="image-check-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        entries = unpack(image, rootfs)
        check_files(rootfs, entries)
        unpacked = sum(m.size for m in entries.values() if m.isfile())
        figures = [
            f"archive:            {mib(archive.stat().st_size)}",
            f"layers (as stored): {mib(image.compressed)} in {len(image.layers)} layer(s)",
            f"root filesystem:    {mib(unpacked)} in {len(entries)} entries",
        ] + [f"/{b}: {mib(entries[b].size)}" for b in BINARIES]
        bundle = (rootfs / CA_BUNDLE).read_bytes()
        readers = [posixpath.basename(b) for b in BINARIES if b"ca-certificates.crt" in (rootfs / b).read_bytes()]
        figures.append(
            f"/{CA_BUNDLE}: {bundle.count(b'-----BEGIN CERTIFICATE-----')} certificates,"
            f" a path known to: {', '.join(readers) or 'neither binary'}"
        )
        if run:
            if os.geteuid() != 0:
                raise Failed("running the binaries needs root (chroot and a network namespace)")
            figures += check_run(rootfs, expected)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", nargs="?", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--static", nargs="+", type=Path, metavar="FILE", help="only refuse dynamic ELF files")
    args = parser.parse_args()
    try:
        if args.static:
            for f in args.static:
                require_static(f.read_bytes(), str(f))
                print(f"{f}: static")
            return 0
        figures = check(args.archive)
    except Failed as e:
        print(f"image check FAILED: {e}", file=sys.stderr)
        return 1
    print(f"image check passed: {args.archive}")
    for line in figures:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
