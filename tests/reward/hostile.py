"""Hostile completions for the sandbox tests and the benchmark: (name, function body).

Each body goes inside ``def simple_math_problem():`` and would return 42 (the ground
truth used with them) if the sandbox let it finish its attack.
"""

from __future__ import annotations

import textwrap

HOSTILE: dict[str, str] = {
    "infinite_loop": """
        while True:
            pass
    """,
    "deep_recursion": """
        import sys
        sys.setrecursionlimit(10**7)
        def down(n):
            return down(n + 1) + 1
        return down(0)
    """,
    "fork_bomb": """
        import os
        while True:
            os.fork()
        return 42
    """,
    "memory_bomb": """
        blocks = []
        while True:
            blocks.append(bytearray(100 * 2**20))
        return 42
    """,
    "huge_output": """
        while True:
            print("x" * 10**6)
        return 42
    """,
    "write_outside_workdir": """
        with open("/tmp/echo_nemo_sandbox_escape.txt", "w") as f:
            f.write("escaped")
        return 42
    """,
    "read_outside_workdir": """
        return int(len(open("/work/main/pyproject.toml").read()) > 0) * 42
    """,
    "read_etc_passwd": """
        return 42 if "root" in open("/etc/passwd").read() else 0
    """,
    "socket_to_local_port": """
        import socket
        s = socket.create_connection(("127.0.0.1", PORT), timeout=1)
        s.sendall(b"escaped")
        return 42
    """,
    "os_system": """
        import os
        os.system("touch /tmp/echo_nemo_sandbox_system.txt")
        return 42
    """,
    "subprocess": """
        import subprocess
        return int(subprocess.check_output(["echo", "42"]))
    """,
    "ctypes": """
        import ctypes
        libc = ctypes.CDLL(None)
        libc.system(b"touch /tmp/echo_nemo_sandbox_ctypes.txt")
        return 42
    """,
    "sys_exit": """
        import sys
        sys.exit(42)
    """,
    "base_exception": """
        class Escape(BaseException):
            pass
        raise Escape("out of the sandbox")
    """,
    "keyboard_interrupt": """
        raise KeyboardInterrupt
    """,
    "signal_handlers": """
        import signal
        for sig in (signal.SIGXCPU, signal.SIGTERM, signal.SIGALRM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        while True:
            pass
    """,
    "sleep_past_limit": """
        import time
        time.sleep(600)
        return 42
    """,
    "os_exit": """
        import os
        os._exit(0)
    """,
    "ctypes_via_loaded_handle": """
        import sys
        libc = sys.modules["echo_nemo.reward.sandbox"]._LIBC
        libc.system(b"touch /tmp/echo_nemo_sandbox_ctypes.txt")
        return 42
    """,
    "raw_socket_module": """
        import _socket
        _socket.socket().connect(("127.0.0.1", PORT))
        return 42
    """,
    "kill_parent": """
        import os
        os.kill(os.getppid(), 9)
        return 42
    """,
}


def hostile_completion(name: str, port: int = 9) -> str:
    """The TinyGSM-format completion that carries attack `name`."""
    body = textwrap.dedent(HOSTILE[name]).replace("PORT", str(port))
    return "def simple_math_problem() -> int:\n" + textwrap.indent(body.strip("\n"), "    ") + "\n"
