# The two commands in the README: `make run` and `make test`. Each creates .venv and installs what it needs first:
# `make run` the service and its runtime dependencies only, `make test` the test extras on top of that.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# pip byte-compiles what it installs (about a third of its CPU time here): --no-compile was tried and dropped, since
# where PYTHONDONTWRITEBYTECODE is set (as on the VM, and in many containers) every later start then compiled the
# imports from source again: the API's imports took 7.1 s of CPU instead of 2.5 s, each worker's some more.
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
# What the kernel compile imports (pyproject.toml's runtime dependencies of these names), installed first: then the
# compile and the install of the rest run side by side (make run) instead of one after the other.
KERNEL_DEPS := numpy scipy numba orjson pydantic pydantic-settings threadpoolctl zstandard
BASE    := $(VENV)/.kernel-deps-installed
# The service (editable) and its runtime dependencies: what `make run` needs.
RUNTIME := $(VENV)/.runtime-installed
# numba's cache of the compiled kernels (next to their sources), filled once and again when a kernel's source changes:
# for `make run` the default jobs' kernels (the workers compile the others in the background once ready), for
# `make test` every kernel.
KERNELS := $(VENV)/.kernels-compiled
KERNELS_ALL := $(VENV)/.kernels-all-compiled
KERNEL_SOURCES := $(wildcard service/dynamics/*_loop.py) service/dynamics/gd_lanes.py service/dynamics/kernel_cache.py \
                  service/dynamics/linearized.py service/dynamics/exact/gd_maps.py \
                  service/jobs/warmup.py
# The test extras on top of the runtime (pyproject.toml's [test], installed as requirements: the project itself is
# not built or installed a second time).
STAMP  := $(VENV)/.installed
# The Python client (client/, `import dlnsim`) with every extra, for the tests; `make run` needs only the service.
CLIENT_STAMP := $(VENV)/.client-installed

.PHONY: run test fuzz bench load install openapi docker-check clean port-free

$(BASE): pyproject.toml
	@echo "dlnsim: installing numpy, scipy, numba and what else the kernels need into $(VENV) (pip, once: about 30 s)…"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import re, sys, tomllib; names = set(sys.argv[1:]); \
	  deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
	  print('\n'.join(d for d in deps if re.split(r'[<>=!~;\[ ]', d, maxsplit=1)[0].lower() in names))" \
	  $(KERNEL_DEPS) > $(VENV)/kernel-requirements.txt
	@$(PIP) -r $(VENV)/kernel-requirements.txt
	@touch $@

$(RUNTIME): $(BASE)
	@echo "dlnsim: installing the service and the rest of its runtime dependencies into $(VENV) (pip, once: about 20 s, beside the compile)…"
	@$(PIP) -e .
	@touch $@

# numba compiles the kernels once here, into its cache next to the sources, each step announced, instead of in
# each worker when it joins (service/jobs/warmup.py): the default jobs' (about 22 s of CPU) for make run, every
# one (about 90 s) for the tests, whose servers would otherwise compile the others beside the tests. From the source
# tree: the kernels need only $(BASE).
$(KERNELS): $(BASE) $(KERNEL_SOURCES)
	@$(PY) -m service.jobs.warmup
	@touch $@

$(KERNELS_ALL): $(RUNTIME) $(KERNEL_SOURCES)
	@$(PY) -m service.jobs.warmup --all
	@touch $@ $(KERNELS)

$(STAMP): $(RUNTIME) $(KERNELS_ALL)
	@echo "dlnsim: installing the test dependencies (pyproject.toml's [test] extra) into $(VENV)…"
	@$(PY) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['test']))" > $(VENV)/test-requirements.txt
	@$(PIP) -r $(VENV)/test-requirements.txt
	@touch $@

# editable: the tests import the client from this checkout's client/src
$(CLIENT_STAMP): $(STAMP) client/pyproject.toml
	@echo "dlnsim: installing the Python client (client/, with its notebook extras) into $(VENV)…"
	@$(PIP) -e './client[notebook]'
	@touch $@

install: $(STAMP) $(CLIENT_STAMP)

# Is DLNSIM_HOST:DLNSIM_PORT free? Asked with the system python before installing, so that a busy port is one line
# at once, not one line after the install (python -m service asks again when it binds).
port-free:
	@$(PYTHON) -m service.listen

# The rest of the install and the kernel compile side by side (2 jobs), then the service.
run: port-free $(BASE)
	@$(MAKE) --no-print-directory -j2 $(RUNTIME) $(KERNELS)
	@$(PY) -m service

# Two processes (pytest-xdist): the suite waits on real servers and workers much of the time; then the fuzz module,
# which schemathesis parametrizes per operation only in a plain run (tests/conftest.py).
test: $(STAMP) $(CLIENT_STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup --ignore=tests/fuzz
	$(PY) -m pytest tests/fuzz

openapi: $(RUNTIME)
	$(PY) -m service.openapi_export

# The long schemathesis profile (tests/fuzz/profiles.py): > 10,000 requests, random seeds, coverage phase.
fuzz: $(STAMP)
	DLNSIM_FUZZ_PROFILE=full $(PY) -m pytest tests/fuzz -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m bench

# Bounded load on loopback (bench/load.py): 50 clients for 30 s against a saturated service; prints the figures.
# Then issue 19's attacks (bench/attacks.py): slow clients, concurrent downloads of the largest trajectory, refused
# requests, with what they cost the API (from /proc).
load: $(STAMP)
	$(PY) -m bench.load
	$(PY) -m bench.attacks

# The container's install path without a Docker engine: build the wheel into a throwaway venv, start the
# installed service outside the source tree until /readyz answers (its worker compiles the GD kernels first:
# up to a few minutes on a slow machine), lint the Dockerfile, validate compose
# against the Compose Specification's schema (pip-installed: no compose CLI or engine).
DOCKER_CHECK := build/docker-check
DOCKER_CHECK_PORT ?= 18765
docker-check: $(STAMP)
	rm -rf $(DOCKER_CHECK) && $(PYTHON) -m venv $(DOCKER_CHECK)/venv
	$(DOCKER_CHECK)/venv/bin/python -m pip wheel --quiet --no-cache-dir --no-deps --wheel-dir $(DOCKER_CHECK)/wheels .
	$(DOCKER_CHECK)/venv/bin/python -m pip install --quiet --no-cache-dir $(DOCKER_CHECK)/wheels/*.whl
	(cd $(DOCKER_CHECK) && DLNSIM_DATA_DIR=data DLNSIM_PORT=$(DOCKER_CHECK_PORT) DLNSIM_WORKERS=1 exec venv/bin/python -m service) & pid=$$!; \
	ok=1; for i in $$(seq 300); do sleep 1; \
	  if $(DOCKER_CHECK)/venv/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$(DOCKER_CHECK_PORT)/readyz', timeout=4)" 2>/dev/null; then ok=0; break; fi; \
	done; kill $$pid; wait $$pid; exit $$ok
	$(VENV)/bin/hadolint Dockerfile
	$(PY) -m check_jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	rm -rf $(DOCKER_CHECK) build/lib dlnsim.egg-info

clean:
	rm -rf $(VENV) .pytest_cache
