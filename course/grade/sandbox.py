"""The sandbox the kernels run in (bubblewrap), and what each forked kernel does to seal itself off.

The zygote runs inside one `bwrap`: a read-only view of the system and of the course checkout, its
own process tree (`--unshare-pid`: everything ends with it, and the grader's /proc is not seen), no
network, a cleared environment, and empty folders over `solutions/`, the submissions, the
gradebook, the feedback and extra-checks folders, $HOME and /tmp. Each kernel forked from it then
takes its own mount, network and IPC namespaces (a private /tmp and /dev/shm, its own loopback, a /proc that
shows only its own processes), and drops root for a uid of its own (no other kernel's files,
processes or signals in reach; no way back: bwrap sets no_new_privs), with at most MAX_DATA_BYTES of
memory per process. Its processes are ended
together by uid when it closes.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ..paths import ROOT

MODES = ("auto", "required", "off")
UID_BASE = 1_000_000  # kernels' uids: UID_BASE + 64 * (grader pid % 100000) + slot, never a real user's
UID_SLOTS = 64
TMP_SIZE = "512m"  # each kernel's private /tmp
SHM_SIZE = "64m"  # and its private /dev/shm
MAX_PROCESSES = 256  # per kernel (its uid): a fork bomb stops here
MAX_FILE_BYTES = 1 << 30  # per file a kernel writes
MAX_DATA_BYTES = 2 << 30  # per kernel process (RLIMIT_DATA: its heap and private mappings): MemoryError past it
NOT_ISOLATED = ("learner code runs as you: it can read your files and environment, solutions/ and the "
                "extra checks, change the course's files, reach the network and other submissions, and "
                "leave processes running")


def probe() -> str:
    """'' where the sandbox works here, else why not."""
    if not sys.platform.startswith("linux"):
        return "bubblewrap needs Linux"
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed (`sudo apt-get install bubblewrap`, or `make sandbox`)"
    if os.geteuid() != 0:
        return "the sandbox gives each kernel a uid of its own, which needs root (run `course grade` as root)"
    import subprocess

    try:
        run = subprocess.run(["bwrap", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-pid",
                              "--unshare-net", "--die-with-parent", "true"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap did not run: {exc}"
    return "" if run.returncode == 0 else f"bwrap refused here: {run.stderr.decode(errors='replace').strip()}"


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


SYSTEM = {"/", "/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/proc", "/sys", "/dev", "/run", "/var",
          "/boot", "/nix", "/opt", "/snap"}


def bwrap_argv(runtime: Path, hidden: list[Path], env: dict) -> list[str]:
    """The bwrap command line for the zygote. Seen empty: $HOME, /tmp, the top folders of the course
    checkout and of every `hidden` path (e.g. /work, /home), with only what kernels need bound
    back read-only (the interpreter and its packages, the course's `checks` and `course`); then
    the `hidden` paths themselves wherever they still show."""
    home = Path(os.path.expanduser("~")).resolve()
    tops = {Path(*p.resolve().parts[:2]) for p in (ROOT, *hidden)}
    broad = sorted({p for p in (home, Path("/tmp"), Path("/var/tmp"), Path("/home"), Path("/root"), Path("/mnt"),
                                Path("/media"), Path("/srv"), *tops)
                    if p.is_dir() and str(p) not in SYSTEM}, key=lambda p: len(p.parts))
    broad = [p for i, p in enumerate(broad) if not any(_under(p, b) for b in broad[:i])]
    argv = ["bwrap", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--unshare-pid", "--unshare-net",
            "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session"]
    for folder in broad:
        argv += ["--tmpfs", str(folder)]
    # Back from under those: the interpreter, its packages, the course's code (not its tests, git or solutions).
    root = ROOT.resolve()
    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    prefixes |= {Path(os.path.realpath(sys.executable)).parent.parent}
    keep = {Path(p).resolve() for p in sys.path if p and Path(p).is_dir()}  # not the checkout's other folders
    keep = {p for p in keep if not _under(root, p) and not _under(p, root) and p != Path.cwd().resolve()}
    keep |= prefixes | {root / "checks", root / "course"}
    kept = []
    for path in sorted(keep, key=lambda p: len(p.parts)):
        top = next((b for b in broad if _under(path, b)), None)
        if top is not None and not any(_under(path, k) for k in kept) and path.exists():
            kept.append(path)
            for folder in reversed(path.parents):  # folders bwrap makes on the way are 0700 by default
                if _under(folder, top) and folder != top:
                    argv += ["--perms", "0755", "--dir", str(folder)]
            argv += ["--ro-bind", str(path), str(path)]
    for path in sorted({p.resolve() for p in hidden}, key=lambda p: len(p.parts)):
        if not path.exists() or (any(_under(path, b) for b in broad) and not any(_under(path, k) for k in kept)):
            continue  # already out of sight
        argv += ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]
    for folder in reversed(runtime.parents):
        if any(_under(folder, b) and folder != b for b in broad):
            argv += ["--perms", "0755", "--dir", str(folder)]
    argv += ["--bind", str(runtime), str(runtime), "--chdir", str(runtime), "--clearenv"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    return argv


MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MNT_DETACH = 1, 32, 4096, 16384, 2


def _mount(libc, source: str, target: str, kind, flags: int) -> None:
    import ctypes

    if libc.mount(source.encode(), target.encode(), kind, flags, None) != 0:
        raise OSError(ctypes.get_errno(), f"mount {source} on {target}")


def _needed_under_tmp() -> list[str]:
    """What a kernel imports from that lives under /tmp: the interpreter's prefixes, the course's code,
    sys.path folders (outermost only)."""
    candidates = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix) if p}
    candidates |= {Path(os.path.realpath(sys.executable)).parent.parent, ROOT.resolve() / "checks",
                   ROOT.resolve() / "course"}
    candidates |= {Path(p).resolve() for p in sys.path if p and Path(p).is_dir()}
    tmp = Path("/tmp")
    inside = sorted((p for p in candidates if _under(p, tmp) and p != tmp and p.exists()), key=lambda p: len(p.parts))
    outermost: list[Path] = []
    for path in inside:
        if not any(_under(path, kept) for kept in outermost):
            outermost.append(path)
    return [str(p) for p in outermost]


def seal_kernel(uid: int, home: str, conn: str) -> None:
    """In a kernel just forked in the sandbox (still root there): namespaces of its own, a private
    /tmp and /proc, loopback up, limits, then its own uid for good."""
    import ctypes
    import fcntl
    import resource
    import socket
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    clone_newns, clone_newnet, clone_newipc = 0x00020000, 0x40000000, 0x08000000
    if libc.unshare(clone_newns | clone_newnet | clone_newipc) != 0:
        raise OSError(ctypes.get_errno(), "unshare")
    # The private /tmp would hide what the kernel runs from when that lives under /tmp (a CI checkout,
    # its .venv): set those aside (a bind outside /tmp), mount the new /tmp, bind them back read-only.
    staged = []
    for index, path in enumerate(_needed_under_tmp()):
        stage = os.path.join(os.path.dirname(conn), f".stage-{os.getpid()}-{index}")
        os.mkdir(stage, 0o700)
        _mount(libc, path, stage, None, MS_BIND | MS_REC)
        staged.append((stage, path))
    # /dev/shm too: bwrap's is root's, and multiprocessing's locks (a ProcessPoolExecutor's) live there.
    for source, target, kind, options in ((b"tmpfs", b"/tmp", b"tmpfs", f"mode=1777,size={TMP_SIZE}".encode()),
                                          (b"tmpfs", b"/dev/shm", b"tmpfs", f"mode=1777,size={SHM_SIZE}".encode()),
                                          (b"proc", b"/proc", b"proc", b"hidepid=2")):
        if libc.mount(source, target, kind, 0, options) != 0:
            raise OSError(ctypes.get_errno(), f"mount {target.decode()}")
    for stage, path in staged:
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(libc, stage, path, None, MS_BIND | MS_REC)
        _mount(libc, path, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        if libc.umount2(stage.encode(), MNT_DETACH) != 0:
            raise OSError(ctypes.get_errno(), f"umount {stage}")
        os.rmdir(stage)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # loopback up (SIOCGIFFLAGS, SIOCSIFFLAGS)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))
    for folder, dirs, files in os.walk(home):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.lchown(name, uid, uid)
    os.chmod(home, 0o700)
    os.chown(conn, uid, uid)
    resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Not RLIMIT_AS: shared libraries and thread stacks reserve address space that is never used.
    resource.setrlimit(resource.RLIMIT_DATA, (MAX_DATA_BYTES, MAX_DATA_BYTES))
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def kill_uid(uid: int) -> None:
    """Every process of this uid, at once (from a child that takes the uid: kill(-1) reaches exactly those)."""
    import signal

    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)  # done before the next request (which may reuse a uid)


def pid_namespace(bwrap_pid: int) -> str | None:
    """The pid namespace of the sandbox bwrap `bwrap_pid` started (that of its child, the sandbox's init)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == bwrap_pid:
                        return os.readlink(f"/proc/{entry}/ns/pid")
            except (OSError, ValueError, IndexError):
                continue
    return None


def host_pid(ns_pid: int, ns: str) -> int | None:
    """The grader's pid of the sandbox's process `ns_pid` (pid namespace `ns`, e.g. 'pid:[4026…]')."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != ns:
                continue
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("NSpid:"):
                        if int(line.split()[-1]) == ns_pid:
                            return int(entry)
                        break
        except (OSError, ValueError):
            continue
    return None
