"""Sphinx configuration of the course website (built by site/build.py: `make site`).

The pages are the learner copies, executed by site/build.py before Sphinx runs; Sphinx only
renders them (MyST-NB with execution off) with sphinx-book-theme. Nothing is fetched from the
network. Repository and hub URLs come from course/links.py, the one place they are set.
"""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from course import links  # noqa: E402

project = "FastAPI async patterns, hands on"
author = "the course's authors"
copyright = "the course's authors (MIT)"
extensions = ["myst_nb"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
nb_execution_mode = "off"  # site/build.py executed the notebooks (errors allowed, cached)
nb_output_stderr = "show"
html_theme = "sphinx_book_theme"
html_title = project
html_static_path = ["_static"]
html_css_files = ["course.css"]
html_last_updated_fmt = None
html_theme_options = {
    "repository_url": links.REPOSITORY,
    "repository_branch": links.BRANCH,
    "path_to_docs": "notebooks",  # lesson pages are notebooks/NN_*.ipynb in the repository
    "use_repository_button": True,
    "use_download_button": True,
    "launch_buttons": {
        "binderhub_url": links.BINDERHUB,
        "jupyterhub_url": links.JUPYTERHUB,
        "notebook_interface": "jupyterlab",
    },
    "show_toc_level": 2,
}


NOTEBOOK_LINK = re.compile(r'href="(\d\d_\w+)\.ipynb"')


def lesson_pages(app, pagename, templatename, context, doctree):
    """Links to a lesson's notebook (the progress tables) lead to its page; a launch bar on top."""
    if not doctree:
        return
    context["body"] = NOTEBOOK_LINK.sub(
        lambda m: f'href="{m[1]}.html"' if m[1] in app.env.all_docs else m[0], context["body"])
    if Path(app.env.doc2path(pagename)).suffix != ".ipynb":
        return
    # Two visible buttons: the theme's launch menu (the rocket) is easy to miss.
    notebook = f"notebooks/{pagename}.ipynb"
    context["body"] = (
        '<div class="course-launch">Run this lesson: '
        f'<a class="course-launch-binder" href="{links.binder_url(notebook)}">on Binder</a> '
        f'<a class="course-launch-hub" href="{links.hub_url(notebook)}">on your JupyterHub</a></div>'
        + context["body"]
    )


def setup(app):
    app.connect("html-page-context", lesson_pages)
