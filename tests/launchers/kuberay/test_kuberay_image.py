"""k8s/image/Containerfile builds under buildah (what `podman build` runs), not only under BuildKit.

No registry is reachable here, so the official Ray image is replaced by a stand-in with the same
user (`ray`, uid 1000, gid 100, home /home/ray) built from this machine's binaries, in a private
buildah storage under tmp_path. Its `pip` does what pip does with a local project (build in the
source tree) and records its arguments. The stand-in leaves /home/ray/ray-serve-cai root-owned, as
WORKDIR does under kaniko and some buildah versions: the build must still pass.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from kube_schemas import ROOT

CONTAINERFILE = ROOT / "k8s" / "image" / "Containerfile"
BUILDAH = shutil.which("buildah")
BINARIES = ("sh", "mkdir", "touch", "id", "install", "ls", "cat")
FAKE_PIP = """#!/bin/sh
# stands in for `pip install .`: setuptools builds in the source tree
echo "pip args: $*"
mkdir -p build && touch build/built || exit 1
echo "pip built in $(pwd) as uid $(id -u)"
"""


def _libraries(binary: str) -> set[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    return set(re.findall(r"(/\S+\.so[.\d]*)", out))


def _stand_in_base(root: Path) -> Path:
    """A tarball of a minimal root filesystem shaped like rayproject/ray where it matters here."""
    for binary in BINARIES:
        source = shutil.which(binary)
        assert source, binary
        for path in {source, *_libraries(source)}:
            target = root / Path(path).relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(path).resolve(), target)
        if Path(source).name != binary:
            shutil.copy2(source, root / "usr" / "bin" / binary)
    (root / "bin").mkdir(exist_ok=True)
    for name in BINARIES:
        link = root / "bin" / name
        if not link.exists():
            found = next(root.rglob(name))
            link.symlink_to("/" + str(found.relative_to(root)))
    (root / "bin" / "pip").write_text(FAKE_PIP)
    (root / "bin" / "python").write_text("#!/bin/sh\nexit 0\n")
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nray:x:1000:100::/home/ray:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nusers:x:100:ray\n")
    (root / "home" / "ray" / "ray-serve-cai").mkdir(parents=True)
    (root / "tmp").mkdir()
    tarball = root.parent / "base.tar"

    def owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
        ray_owned = info.name.startswith("./home/ray") and info.name != "./home/ray/ray-serve-cai"
        info.uid, info.gid = (1000, 100) if ray_owned else (0, 0)
        if info.name in ("./bin/pip", "./bin/python"):
            info.mode = 0o755
        if info.name == "./tmp":
            info.mode = 0o1777
        return info

    with tarfile.open(tarball, "w") as tar:
        tar.add(root, arcname=".", filter=owner)
    return tarball


@pytest.fixture(scope="module")
def buildah(tmp_path_factory: pytest.TempPathFactory):
    if BUILDAH is None:
        pytest.skip("buildah is not installed (apt-get install buildah, or podman which embeds it)")
    work = tmp_path_factory.mktemp("buildah")
    storage = ["--root", str(work / "storage"), "--runroot", str(work / "run"), "--storage-driver", "vfs"]

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([BUILDAH, *storage, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    probe = run("--version", check=False)
    if probe.returncode != 0:
        pytest.skip(f"buildah does not run here: {probe.stderr.strip()[:200]}")
    tarball = _stand_in_base(work / "rootfs")
    version = re.search(r"^ARG RAY_VERSION=(\S+)$", CONTAINERFILE.read_text(), re.M).group(1)
    python = re.search(r"^ARG PYTHON_TAG=(\S+)$", CONTAINERFILE.read_text(), re.M).group(1)
    for suffix in ("", "-gpu"):
        name = f"docker.io/rayproject/ray:{version}-{python}{suffix}"
        run("from", "--name", f"base{suffix}", "scratch")
        run("add", f"base{suffix}", str(tarball), "/")
        run("config", "--user", "1000:100", "--env", "PATH=/usr/bin:/bin", f"base{suffix}")
        run("commit", f"base{suffix}", name)
    return run


def build(buildah, containerfile: Path, *args: str) -> subprocess.CompletedProcess:
    return buildah("bud", "--isolation", "chroot", "--pull-never", "-f", str(containerfile), *args, "-t",
                   "ray-serve-cai-test", ".", check=False)


@pytest.mark.parametrize("args, extras", [((), "matrix"), (("VARIANT=gpu",), "matrix,gpu"),
                                          (("EXTRAS=matrix,s3",), "matrix,s3")])
def test_containerfile_builds_under_buildah(buildah, args, extras):
    done = build(buildah, CONTAINERFILE, *[f"--build-arg={arg}" for arg in args])
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert f"pip args: install --no-cache-dir .[{extras}]" in log
    assert "pip built in /home/ray/ray-serve-cai as uid 1000" in log


def test_stand_in_reproduces_the_root_owned_workdir(buildah, tmp_path):
    """Without the explicit, uid-1000-owned source directory the same build fails: the check above
    would catch the defect."""
    text = CONTAINERFILE.read_text()
    broken = re.sub(r"^USER root\nRUN install -d [^\n]+\n", "", text, flags=re.M)
    assert broken != text
    (tmp_path / "Containerfile").write_text(broken)
    done = build(buildah, tmp_path / "Containerfile")
    assert done.returncode != 0
    assert "Permission denied" in done.stdout + done.stderr


def test_no_stage_is_chosen_by_an_argument():
    """`FROM base-${VARIANT}` (a stage picked by an ARG) failed under podman 4.3 / buildah 1.28 with
    'base-cpu: image not known'; the original Containerfile does, the current one must not."""
    images = re.findall(r"^FROM\s+(\S+)", CONTAINERFILE.read_text(), re.M | re.I)
    assert images and all(image.startswith("docker.io/") or "$" not in image for image in images), images
