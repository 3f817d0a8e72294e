"""OS-level confinement of the sandbox child: Landlock (files, TCP, signals) and seccomp-bpf.

Applied in the forked child after its rlimits and uid drop and before model code runs
(`confine`); neither can be lifted by the process afterwards, whatever that code does to
Python objects, so they hold when the audit hook is corrupted or off.

- Landlock (Linux >= 5.13, unprivileged): the child may read only its execution dir, the
  Python installation (`read_roots`), the system library dirs and a few devices, and write
  only inside its execution dir (no device/fifo/socket files anywhere). From ABI 4 on, TCP
  bind/connect are denied; from ABI 6 on, signals to processes outside the child's domain
  and abstract unix sockets are denied.
- seccomp-bpf (with PR_SET_NO_NEW_PRIVS, unprivileged): a deny list (`DENIED_SYSCALLS`) of
  what model arithmetic never needs: creating processes *and threads* (fork, vfork, clone,
  clone3: numpy runs single-threaded here, and no thread means no thread bomb), execve,
  sockets, ptrace and cross-process memory access, mknod, namespaces and mounts, signals
  (kill, tgkill, ...), SysV/POSIX IPC, io_uring (whose operations bypass seccomp), kernel
  keyrings, bpf, module loading. A denied call fails with EPERM, which Python raises as a
  readable PermissionError. A syscall of another ABI (x32 on x86-64, a foreign arch) kills
  the process.

Bindings: raw syscalls through ctypes, with the BPF program built here. The maintained
Python packages either are pre-releases (``landlock``) or need the system's libseccomp.so,
which ``pip install`` does not bring (``pyseccomp``); both call the same syscalls through
ctypes anyway. Syscall numbers are tabled for x86-64 and aarch64; elsewhere seccomp is
reported as unavailable and the child runs with the layers it has.
"""

from __future__ import annotations

import ctypes
import os
import platform
import socket
import struct
import sys
import sysconfig
from dataclasses import dataclass

# Landlock syscalls (the same numbers on every architecture: asm-generic table).
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
# Filesystem access rights (ABI 1: bits 0-12; REFER: ABI 2; TRUNCATE: 3; IOCTL_DEV: 5).
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
FS_MAKE_REG, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK = 1 << 8, 1 << 9, 1 << 10, 1 << 11
FS_MAKE_SYM, FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 12, 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2  # ABI 6

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x06
X32_SYSCALL_BIT = 0x40000000

# name: (x86-64, aarch64); None where the architecture has no such call.
DENIED_SYSCALLS: dict[str, tuple[int | None, int | None]] = {
    # processes and threads, program execution
    "fork": (57, None), "vfork": (58, None), "clone": (56, 220), "clone3": (435, 435),
    "execve": (59, 221), "execveat": (322, 281),
    # network and local sockets
    "socket": (41, 198), "socketpair": (53, 199), "connect": (42, 203), "bind": (49, 200),
    "listen": (50, 201), "accept": (43, 202), "accept4": (288, 242),
    # other processes: tracing, memory, signals, pidfds
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "kill": (62, 129), "tkill": (200, 130), "tgkill": (234, 131), "rt_sigqueueinfo": (129, 138),
    "rt_tgsigqueueinfo": (297, 240), "pidfd_open": (434, 434), "pidfd_send_signal": (424, 424),
    "pidfd_getfd": (438, 438), "kcmp": (312, 272), "migrate_pages": (256, 238),
    "move_pages": (279, 239),
    # special files, namespaces, mounts, root changes
    "mknod": (133, None), "mknodat": (259, 33), "unshare": (272, 97), "setns": (308, 268),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264), "fanotify_init": (300, 262), "quotactl": (179, 60),
    # identity and capabilities
    "setuid": (105, 146), "setgid": (106, 144), "setreuid": (113, 145), "setregid": (114, 143),
    "setresuid": (117, 147), "setresgid": (119, 149), "setgroups": (116, 159),
    "setfsuid": (122, 151), "setfsgid": (123, 152), "capset": (126, 91),
    "personality": (135, 92),
    # IPC that reaches other processes
    "shmget": (29, 194), "shmat": (30, 196), "shmctl": (31, 195), "semget": (64, 190),
    "semop": (65, 193), "semtimedop": (220, 192), "semctl": (66, 191), "msgget": (68, 186),
    "msgsnd": (69, 189), "msgrcv": (70, 188), "msgctl": (71, 187), "mq_open": (240, 180),
    "mq_unlink": (241, 181), "mq_timedsend": (242, 182), "mq_timedreceive": (243, 183),
    "mq_notify": (244, 184), "mq_getsetattr": (245, 185),
    # kernel facilities model code never needs
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106), "reboot": (169, 142),
    "swapon": (167, 224), "swapoff": (168, 225), "acct": (163, 89), "syslog": (103, 116),
    "settimeofday": (164, 170), "clock_settime": (227, 112), "sethostname": (170, 161),
    "setdomainname": (171, 162), "vhangup": (153, 58), "ioperm": (173, None),
    "iopl": (172, None), "uselib": (134, None),
}  # fmt: skip
_ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # column, AUDIT_ARCH_*
DEVICES_READ = ("/dev/urandom", "/dev/random", "/dev/zero")
SYSTEM_LIB_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib")
SYSTEM_LIB_FILES = ("/etc/ld.so.cache",)  # the dynamic loader's index, for C extensions


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def read_roots() -> tuple[str, ...]:
    """The Python installation's library dirs (stdlib, site-packages), real paths ending in
    a separator. A venv's prefix may hold other things (the project, for a venv inside
    it): only its lib/ is listed."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    roots.update(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))
    return tuple(sorted(os.path.realpath(os.path.join(r, "lib")) + os.sep for r in roots)) + (
        os.path.realpath(sysconfig.get_paths()["stdlib"]) + os.sep,
    )


def seccomp_filter(arch: str) -> bytes | None:
    """The BPF program (sock_filter array) for `arch`, or None when it is not tabled.

    Layout: load arch; foreign arch -> kill; load nr; (x86-64: nr >= X32 bit -> kill);
    one ``jeq nr`` per denied call jumping to the final ``ret ERRNO(EPERM)``; ``ret ALLOW``.
    """
    if arch not in _ARCHES:
        return None
    column, audit_arch = _ARCHES[arch]
    numbers = sorted({nrs[column] for nrs in DENIED_SYSCALLS.values() if nrs[column] is not None})
    ins = [(BPF_LD_W_ABS, 0, 0, 4), (BPF_JEQ_K, 1, 0, audit_arch), (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
           (BPF_LD_W_ABS, 0, 0, 0)]  # fmt: skip
    if arch == "x86_64":
        ins += [(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT), (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS)]
    for i, nr in enumerate(numbers):
        ins.append((BPF_JEQ_K, len(numbers) - i, 0, nr))  # to the ERRNO return below
    ins += [(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW), (BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | 1)]  # EPERM
    return b"".join(struct.pack("=HBBI", *i) for i in ins)


@dataclass
class Plan:
    """What the child applies, prepared once in the fork server: the layers asked for, the
    Landlock ABI (0: none) with why, the seccomp program (None: none) with why."""

    landlock_abi: int
    landlock_note: str
    seccomp_note: str
    read_dirs: tuple[str, ...]
    read_files: tuple[str, ...]
    libc: ctypes.CDLL | None
    _prog: _SockFprog | None = None
    _code: ctypes.Array | None = None

    @property
    def seccomp(self) -> bool:
        return self._prog is not None


def _landlock_abi(libc: ctypes.CDLL) -> tuple[int, str]:
    abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 0:
        return 0, f"unavailable: {os.strerror(ctypes.get_errno())} (kernel without Landlock?)"
    return abi, f"ABI {abi}"


def plan(landlock: bool, seccomp: bool) -> Plan:
    """Prepare the layers asked for that this kernel and architecture support."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError as e:
        return Plan(0, f"no libc: {e}", f"no libc: {e}", (), (), None)
    abi, landlock_note = _landlock_abi(libc) if landlock else (0, "disabled")
    code = seccomp_filter(platform.machine()) if seccomp else None
    seccomp_note = "disabled" if not seccomp else (
        f"deny list of {len(DENIED_SYSCALLS)} calls" if code else
        f"no syscall table for {platform.machine()}")  # fmt: skip
    read_dirs = tuple(dict.fromkeys(
        os.path.realpath(p) for p in read_roots() + SYSTEM_LIB_DIRS if os.path.isdir(p)))  # fmt: skip
    read_files = tuple(p for p in SYSTEM_LIB_FILES if os.path.isfile(p))
    p = Plan(abi, landlock_note, seccomp_note, read_dirs, read_files, libc)
    if code:
        p._code = ctypes.create_string_buffer(code, len(code))
        p._prog = _SockFprog(len(code) // 8, ctypes.addressof(p._code))
    return p


def _handled_fs(abi: int) -> int:
    rights = (1 << 13) - 1
    rights |= FS_REFER if abi >= 2 else 0
    rights |= FS_TRUNCATE if abi >= 3 else 0
    return rights | (FS_IOCTL_DEV if abi >= 5 else 0)


def _add_rule(libc: ctypes.CDLL, ruleset: int, path: str, allowed: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        rule = _PathBeneath(allowed, fd)
        if libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH,
                        ctypes.byref(rule), 0) != 0:  # fmt: skip
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
    finally:
        os.close(fd)


def landlock_ruleset(p: Plan, workdir: str) -> int | None:
    """The child's Landlock ruleset as an fd (None without Landlock). Built before the uid
    drop: uid 65534 may not reach the Python installation's directories to name them."""
    if not p.landlock_abi:
        return None
    abi, libc = p.landlock_abi, p.libc
    fs = _handled_fs(abi)
    attr = _RulesetAttr(fs, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)  # fmt: skip
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        special = FS_EXECUTE | FS_MAKE_CHAR | FS_MAKE_BLOCK | FS_MAKE_FIFO | FS_MAKE_SOCK
        _add_rule(libc, ruleset, workdir, fs & ~special)
        for d in p.read_dirs:
            _add_rule(libc, ruleset, d, FS_READ_FILE | FS_READ_DIR)
        for f in p.read_files + DEVICES_READ:
            _add_rule(libc, ruleset, f, FS_READ_FILE)
        _add_rule(libc, ruleset, os.devnull, fs & (FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE | FS_IOCTL_DEV))
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


def confine(p: Plan, ruleset: int | None) -> None:
    """Apply the planned layers to this process, irreversibly: enforce `ruleset` (from
    `landlock_ruleset`), then the seccomp filter. Raises OSError on failure: the caller
    must then run nothing."""
    if p.libc is None or not (ruleset is not None or p.seccomp):
        return
    if p.libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if ruleset is not None:
        try:
            if p.libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
                raise OSError(ctypes.get_errno(), "landlock_restrict_self")
        finally:
            os.close(ruleset)
    if p._prog is not None:
        if p.libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(p._prog), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def probe() -> dict[str, bool]:
    """Run in a confined child (before any audit hook): which layers actually hold.
    Landlock: listing / is refused; seccomp: creating a socket fails with EPERM."""
    held = {}
    try:
        os.listdir("/")
        held["landlock"] = False
    except PermissionError:
        held["landlock"] = True
    try:
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
        held["seccomp"] = False
    except PermissionError:
        held["seccomp"] = True
    return held
