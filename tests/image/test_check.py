#!/usr/bin/env python3
"""The image check must fail on a broken image: each test rewrites the built archive (a config
field, a layer added on top, a corrupted blob) and expects the check to name that problem. No
buildah or Rust build: the variants are OCI archives written here from the real one.

    IMAGE_ARCHIVE=target/image/flyte-auth-agent.oci.tar python3 tests/image/test_check.py

Needs the built archive (deploy/image/build) and root, as the check itself does.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check  # noqa: E402

ARCHIVE = Path(os.environ.get("IMAGE_ARCHIVE", check.DEFAULT_ARCHIVE))
# A dynamically linked x86-64 ELF every Debian machine has.
DYNAMIC_ELF = Path("/usr/bin/true")


def entry(path: str, data: bytes | None = None, mode: int = 0o644, uid: int = 0, kind: bytes = tarfile.REGTYPE):
    """A layer entry: a file with `data`, or a directory (`kind=tarfile.DIRTYPE`)."""
    info = tarfile.TarInfo(path)
    info.type, info.mode, info.uid, info.gid = kind, mode, uid, uid
    info.size = len(data) if data is not None else 0
    return info, data


def variant(dst: Path, *, config=None, layer=None, corrupt_first_layer=False) -> Path:
    """Writes a copy of the built archive to `dst`: `config(cfg)` edits the image config, `layer`
    (a list of `entry(...)`) is added as an uncompressed layer on top."""
    with tarfile.open(ARCHIVE) as tar:
        blobs = {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}

    def put(data: bytes, media: str) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        blobs[f"blobs/sha256/{digest}"] = data
        return {"mediaType": media, "digest": f"sha256:{digest}", "size": len(data)}

    def get(desc: dict) -> bytes:
        return blobs["blobs/sha256/" + desc["digest"].split(":")[1]]

    index = json.loads(blobs["index.json"])
    manifest = json.loads(get(index["manifests"][0]))
    cfg = json.loads(get(manifest["config"]))
    if config:
        config(cfg)
    if layer:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
            for info, data in layer:
                out.addfile(info, io.BytesIO(data) if data is not None else None)
        desc = put(buf.getvalue(), "application/vnd.oci.image.layer.v1.tar")
        manifest["layers"].append(desc)
        cfg["rootfs"]["diff_ids"].append(desc["digest"])
    if corrupt_first_layer:
        name = "blobs/sha256/" + manifest["layers"][0]["digest"].split(":")[1]
        data = bytearray(blobs[name])
        data[len(data) // 2] ^= 0xFF
        blobs[name] = bytes(data)
    manifest["config"] = put(json.dumps(cfg).encode(), manifest["config"]["mediaType"])
    index["manifests"][0] = {**index["manifests"][0], **put(json.dumps(manifest).encode(), manifest["mediaType"])}
    blobs["index.json"] = json.dumps(index).encode()
    with tarfile.open(dst, "w") as out:
        for name, data in blobs.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return dst


class BrokenImages(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not ARCHIVE.is_file():
            raise RuntimeError(f"{ARCHIVE}: no archive; build it with deploy/image/build")
        cls.tmp = Path(tempfile.mkdtemp(prefix="image-check-test-"))
        cls.agent = cls.binary(check.AGENT)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    @classmethod
    def binary(cls, path: str) -> bytes:
        image = check.read_archive(ARCHIVE)
        with tarfile.open(fileobj=io.BytesIO(image.layers[0])) as tar:
            return tar.extractfile(tar.getmember(path)).read()

    def refused(self, archive: Path, message: str, run: bool = False) -> None:
        with self.assertRaises(check.Failed) as caught:
            check.check(archive, run=run)
        self.assertIn(message, str(caught.exception))

    def test_an_unchanged_rewrite_passes(self):
        # The rewriting itself breaks nothing: each refusal below is its one change.
        check.check(variant(self.tmp / "same.tar", layer=[]), run=True)

    def test_user_root(self):
        archive = variant(self.tmp / "root.tar", config=lambda c: c["config"].update(User="0:0"))
        self.refused(archive, "runs as user '0:0', expected '65532:65532'")

    def test_no_user(self):
        archive = variant(self.tmp / "nouser.tar", config=lambda c: c["config"].pop("User"))
        self.refused(archive, "runs as user None")

    def test_another_entrypoint(self):
        archive = variant(self.tmp / "ep.tar", config=lambda c: c["config"].update(Entrypoint=["/bin/sh", "-c"]))
        self.refused(archive, "entrypoint ['/bin/sh', '-c']")

    def test_another_working_directory(self):
        archive = variant(self.tmp / "wd.tar", config=lambda c: c["config"].update(WorkingDir="/"))
        self.refused(archive, "working directory '/', expected '/home/nonroot'")

    def test_a_version_label_that_is_not_cargos(self):
        def edit(c):
            c["config"]["Labels"]["org.opencontainers.image.version"] = "0.0.0-other"

        self.refused(variant(self.tmp / "label.tar", config=edit), "label org.opencontainers.image.version")

    def test_a_shell(self):
        bin_dir = entry("bin", kind=tarfile.DIRTYPE, mode=0o755)
        archive = variant(self.tmp / "sh.tar", layer=[bin_dir, entry("bin/sh", self.agent, 0o755)])
        self.refused(archive, "the image has a shell: /bin/sh")

    def test_a_symlinked_shell(self):
        link = entry("bin/sh", kind=tarfile.SYMTYPE, mode=0o777)
        link[0].linkname = "/" + check.AGENT
        archive = variant(self.tmp / "link.tar", layer=[entry("bin", kind=tarfile.DIRTYPE, mode=0o755), link])
        self.refused(archive, "layer entry /bin/sh is a link or device")

    def test_another_program(self):
        archive = variant(self.tmp / "prog.tar", layer=[entry("usr/local/bin/helper", self.agent, 0o755)])
        self.refused(archive, "executables ['/usr/local/bin/flyte-auth-agent'")

    def test_swapped_binaries(self):
        archive = variant(self.tmp / "swap.tar", layer=[entry(check.INJECTOR, self.agent, 0o755)])
        self.refused(archive, "flyte-auth-injector --version printed 'flyte-auth-agent", run=True)

    def test_a_dynamically_linked_binary(self):
        archive = variant(
            self.tmp / "dyn.tar", layer=[entry(check.INJECTOR, DYNAMIC_ELF.read_bytes(), 0o755)]
        )
        self.refused(archive, "/usr/local/bin/flyte-auth-injector is dynamically linked (interpreter /lib64/")

    def test_a_corrupted_layer(self):
        self.refused(variant(self.tmp / "bad.tar", corrupt_first_layer=True), "does not match its digest")

    def test_tmp_not_world_writable(self):
        archive = variant(self.tmp / "tmp.tar", layer=[entry("tmp", kind=tarfile.DIRTYPE, mode=0o755)])
        self.refused(archive, "/tmp is 0:0 0o755, expected a directory of 0:0 with mode 0o1777")

    def test_home_owned_by_root(self):
        archive = variant(self.tmp / "home.tar", layer=[entry(check.HOME, kind=tarfile.DIRTYPE, mode=0o700)])
        self.refused(archive, "/home/nonroot is 0:0 0o700, expected a directory of 65532:65532")

    def test_passwd_without_nonroot(self):
        passwd = b"root:x:0:0:root:/root:/sbin/nologin\n"
        self.refused(variant(self.tmp / "pw.tar", layer=[entry("etc/passwd", passwd)]), "/etc/passwd has no entry with id 65532")

    def test_an_nsswitch_conf_that_asks_dns_first(self):
        # glibc before 2.35 behaves so without the file: a DNS server that answers NXDOMAIN hides
        # /etc/hosts. The static binaries read the image's nsswitch.conf, so the check sees it.
        conf = b"hosts: dns [!UNAVAIL=return] files\n"
        archive = variant(self.tmp / "nss.tar", layer=[entry("etc/nsswitch.conf", conf)])
        self.refused(archive, "is in /etc/hosts but was asked of DNS", run=True)

    def test_a_name_dns_does_not_know_is_not_resolved_elsewhere(self):
        # "hosts: files" only: the DNS name must then fail, which the check names.
        archive = variant(self.tmp / "files.tar", layer=[entry("etc/nsswitch.conf", b"hosts: files\n")])
        self.refused(archive, f"{check.DNS_NAME} was not asked of the DNS server", run=True)

    def test_the_command_exits_1_naming_the_problem(self):
        # deploy/image/build relies on the exit code.
        archive = variant(self.tmp / "cli.tar", config=lambda c: c["config"].update(User="0:0"))
        done = subprocess.run([sys.executable, check.__file__, str(archive)], capture_output=True, text=True)
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertIn("image check FAILED: the image runs as user '0:0'", done.stderr)

    def test_the_static_gate_refuses_a_dynamic_binary(self):
        done = subprocess.run(
            [sys.executable, check.__file__, "--static", str(DYNAMIC_ELF)], capture_output=True, text=True
        )
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertIn(f"{DYNAMIC_ELF} is dynamically linked", done.stderr)


if __name__ == "__main__":
    unittest.main()
