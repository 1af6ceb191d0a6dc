"""Where the course lives online: the one place to change when you publish your own copy.

The website's launch buttons (site/conf.py), the README's Binder badge (a test compares it) and
the instructor docs all use these values. Change a line here, run `make site`, and every lesson
page links to your repository and your hub.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

REPOSITORY = "https://github.com/fastapi-async-course/fastapi-async-course"  # a GitHub repository
BRANCH = "main"  # the branch Binder builds and nbgitpuller pulls
BINDERHUB = "https://mybinder.org"
JUPYTERHUB = "https://hub.example.org"  # your class's JupyterHub (its image needs nbgitpuller)


def repo_parts(repository: str = REPOSITORY) -> tuple[str, str]:
    """('owner', 'name') of a GitHub repository URL."""
    owner, name = urlsplit(repository).path.strip("/").removesuffix(".git").split("/")[:2]
    return owner, name


def binder_url(notebook: str, *, repository: str = REPOSITORY, branch: str = BRANCH,
               binderhub: str = BINDERHUB) -> str:
    """Binder, opening `notebook` (a path in the repository, e.g. notebooks/01_event_loop.ipynb) in JupyterLab."""
    owner, name = repo_parts(repository)
    return f"{binderhub.rstrip('/')}/v2/gh/{owner}/{name}/{branch}?urlpath=lab/tree/{notebook}"


def hub_url(notebook: str, *, repository: str = REPOSITORY, branch: str = BRANCH,
            jupyterhub: str = JUPYTERHUB) -> str:
    """An nbgitpuller link: the hub clones (or updates) the repository into the learner's home,
    in a folder named like the repository, then opens `notebook` in JupyterLab."""
    _, name = repo_parts(repository)
    query = urlencode({"repo": repository, "urlpath": f"lab/tree/{name}/{notebook}", "branch": branch}, safe="/")
    return f"{jupyterhub.rstrip('/')}/hub/user-redirect/git-pull?{query}"
