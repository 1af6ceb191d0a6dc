# The course's JupyterLab server (Makefile and Binder's postBuild install this file into the
# environment's etc/jupyter/). Its terminal must find `course`, however Lab was started.
import os
import shlex
import sys

# The environment that runs the server comes first on PATH, for its terminals and kernels alike
# (Lab may be started as `.venv/bin/jupyter lab`, without the environment on PATH).
_bin = os.path.join(sys.prefix, "bin")
if _bin not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _bin + os.pathsep + os.environ.get("PATH", "")

# When the server's stdout is not a terminal (nohup, a log file, a container), JupyterLab starts
# terminals as login shells, and Debian's /etc/profile then resets PATH: `course: command not
# found`. Naming the shell turns that off; the shell is still interactive and reads ~/.bashrc.
c.ServerApp.terminado_settings = {"shell_command": shlex.split(os.environ.get("SHELL") or "/bin/sh")}  # noqa: F821
