# The two commands of the README:
#   make course   set up (own virtual environment) and open the course in JupyterLab
#   make test     set up and run every test (what CI runs, through .ci/run)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# JupyterLab refuses to run as root unless told; learners are rarely root, containers often are.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
LAB_ARGS ?=

.PHONY: course test chromium sandbox build bench bench-verdicts clean

# JupyterLab starts with the course's environment first on PATH, so `course` and `python` in
# its terminal are the course's own.
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.json
# Its terminal finds `course` however Lab is started (see the file's comments).
LAB_CONFIG := $(VENV)/etc/jupyter/jupyter_server_config.py

course: $(VENV)/.installed-lab $(LAB_SETTINGS) $(LAB_CONFIG)
	@echo "==> starting JupyterLab on the welcome notebook (Ctrl+C twice to stop)"
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/jupyter lab $(ROOT_FLAG) --LabApp.default_url=/lab/tree/notebooks/00_welcome.ipynb $(LAB_ARGS)

# No news pop-up over the first lesson (the same file Binder's postBuild installs).
$(LAB_SETTINGS): binder/overrides.json $(VENV)/.installed-lab
	@mkdir -p $(dir $@)
	cp binder/overrides.json $@

$(LAB_CONFIG): binder/jupyter_server_config.py $(VENV)/.installed-lab
	@mkdir -p $(dir $@)
	cp binder/jupyter_server_config.py $@

test: $(VENV)/.installed-dev chromium sandbox
	$(PY) -m pytest tests -n 2 --dist loadfile

# The browser test drives Debian's chromium (Playwright's own browser download is not used).
# As root with apt, it is installed; elsewhere the browser test says it is skipped, outside CI.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found: the browser test will be skipped"; fi; }

# `course grade` seals each submission off with Debian's bubblewrap (see README, "Grading a class").
# As root with apt, it is installed; elsewhere grading says loudly what is not isolated.
sandbox:
	@command -v bwrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's bubblewrap for course grade's sandbox"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; \
	  else echo "bubblewrap not found: course grade will run submissions unsandboxed (and say so)"; fi; }

build: $(VENV)/.installed-dev        ## regenerate notebooks/ from solutions/
	$(VENV)/bin/course build

bench: $(VENV)/.installed-dev        ## seconds per notebook and per check cell
	$(PY) bench/notebooks.py

bench-verdicts: $(VENV)/.installed-dev  ## wrong verdicts and margins of the timing checks, idle and loaded
	$(PY) -u bench/verdicts.py --runs 15  # about 12 min on 2 cores (10 runs took 468 s)

.PHONY: site
site: $(VENV)/.installed-site      ## the course as a static website in _build/site/ (offline; see site/build.py)
	$(PY) site/build.py --out _build/site

# Setup says what it does: about a minute the first time, then nothing until pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (found %s)" % sys.version.split()[0])'
	@test -x $(PY) || { echo "==> creating the course's own environment in $(VENV)/"; $(PYTHON) -m venv $(VENV); }
	@echo "==> installing the course and its packages into $(VENV)/ ('$*' set; about a minute the first time)"
	$(PY) -m pip install --upgrade --progress-bar off --disable-pip-version-check pip | tail -n 1
	$(PY) -m pip install --progress-bar off --disable-pip-version-check --editable '.[$*]'
	@touch $@
	@echo "==> environment ready"

clean:
	rm -rf $(VENV) .pytest_cache
