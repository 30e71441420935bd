# The two commands in the README: `make run` and `make test`. Each creates .venv and installs first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The Python client (client/, `import dlnsim`) with every extra, for the tests; `make run` needs only the service.
CLIENT_STAMP := $(VENV)/.client-installed

.PHONY: run test fuzz bench load install openapi docker-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@# numba compiles the GD kernels once here, into its cache next to the sources (~1 min), instead of in
	@# each worker when the first job arrives (service/jobs/warmup.py)
	$(PY) -m service.jobs.warmup
	touch $(STAMP)

# editable: the tests import the client from this checkout's client/src
$(CLIENT_STAMP): $(STAMP) client/pyproject.toml
	$(PY) -m pip install --quiet -e './client[notebook]'
	touch $(CLIENT_STAMP)

install: $(STAMP) $(CLIENT_STAMP)

run: $(STAMP)
	$(PY) -m service

test: $(STAMP) $(CLIENT_STAMP)
	$(PY) -m pytest

openapi: $(STAMP)
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
