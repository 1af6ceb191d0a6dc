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

# A notebook whose metadata.language_info differs from what the kernel reports is marked
# changed the moment its kernel connects (Lab rewrites it), and closing it asks to save. The
# build cannot know the learner's exact Python, so the server fills it in as course notebooks
# are opened (the server and its kernels share this environment); the file on disk is untouched.
from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager  # noqa: E402

_LANGUAGE_INFO = {
    "name": "python", "version": sys.version.split()[0], "mimetype": "text/x-python",
    "codemirror_mode": {"name": "ipython", "version": sys.version_info[0]},
    "pygments_lexer": f"ipython{sys.version_info[0]}", "nbconvert_exporter": "python", "file_extension": ".py",
}


class CourseContentsManager(AsyncLargeFileManager):
    async def get(self, path, content=True, type=None, format=None, **kwargs):
        model = await super().get(path, content=content, type=type, format=format, **kwargs)
        notebook = model.get("content") if model.get("type") == "notebook" else None
        if notebook is not None and "course" in notebook.get("metadata", {}):
            notebook["metadata"]["language_info"] = dict(_LANGUAGE_INFO)
        return model


c.ServerApp.contents_manager_class = CourseContentsManager  # noqa: F821
