# Two commands on a fresh clone: `make run` serves the API, `make test` runs every test.
# Only Python 3.11 and make are needed; the virtual environment is made on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# `make run` needs only what the server imports; `make test` adds the tools (the dev lock
# holds the runtime lock's versions too).
RUNTIME_STAMP := $(VENV)/.installed-runtime
DEV_STAMP := $(VENV)/.installed-dev
PIP_INSTALL = $(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes
PORT ?= 8000
export PORT

.PHONY: install install-runtime run migrate test lint typecheck checkov schema proto bench soak clean

install: $(DEV_STAMP)
install-runtime: $(RUNTIME_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): requirements.lock | $(VENV)/bin/python
	$(PIP_INSTALL) -r requirements.lock
	@touch $@

$(DEV_STAMP): requirements-dev.lock | $(VENV)/bin/python
	$(PIP_INSTALL) -r requirements-dev.lock
	@touch $@

# Migrations get 30 s (bounded in Python: no GNU timeout needed): a database that is down
# or hangs is reported, and the server starts anyway (its health endpoint then says db FATAL).
migrate: install-runtime
	@$(BIN)/python -c 'import sys; from letraz.prestart import migrate; p = migrate(); p and print("make migrate:", p, file=sys.stderr)'

# Without DJANGO_SECRET_KEY, development mode (DJANGO_DEBUG=true) with a throwaway key; it
# listens on 127.0.0.1 only (Django's debug pages are for this machine) unless BIND_HOST
# says otherwise (BIND_HOST=0.0.0.0). The configuration is checked before anything else.
run: export DJANGO_DEBUG := $(or $(DJANGO_DEBUG),$(if $(DJANGO_SECRET_KEY),false,true))
run: LISTEN = $(or $(BIND_HOST),$(if $(filter true True TRUE 1 yes on,$(DJANGO_DEBUG)),127.0.0.1,0.0.0.0))
run: install-runtime
	@$(BIN)/python -m letraz.prestart
	exec $(BIN)/gunicorn -c gunicorn.conf.py --bind $(LISTEN):$(PORT) letraz.wsgi:application

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy letraz core health

# openapi.yaml is generated, never edited by hand.
schema: install
	$(BIN)/python manage.py spectacular --validate --fail-on-warn --file openapi.yaml

# The stubs are committed (runtime needs no protoc); regenerate after editing a .proto.
proto: install
	$(BIN)/python -m grpc_tools.protoc -I . \
	  -I "$$($(BIN)/python -c 'import importlib.resources as r; print(r.files("grpc_tools") / "_proto")')" \
	  --python_out=. --pyi_out=. --grpc_python_out=. \
	  health/proto/util_health.proto core/proto/core_health.proto

# checkov (the scanner platform teams run) over the manifests and the Dockerfile, from a
# venv of its own: it pins dozens of packages that must not bend the app's locks.
# --skip-download: no call to Prisma Cloud; every finding left is suppressed in place.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

$(CHECKOV_STAMP): deploy/checkov/requirements.lock
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes -r deploy/checkov/requirements.lock
	@touch $@

checkov: $(CHECKOV_STAMP)
	$(CHECKOV_VENV)/bin/checkov --skip-download --quiet --compact --framework kubernetes -d deploy/kubernetes
	$(CHECKOV_VENV)/bin/checkov --skip-download --quiet --compact --framework dockerfile -f Dockerfile

# Test files run side by side in TEST_WORKERS processes (pytest-xdist, a file per worker
# at a time): most files wait on servers, peers and the image build rather than on the CPU.
# TEST_WORKERS=0 runs them one after another in this process.
TEST_WORKERS ?= 4
test: lint typecheck checkov
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# The soak (bench/soak.py): probes at a steady rate while the peers flap through fault
# proxies; fails on a 500, a slow probe or growth. SOAK_SECONDS of flapping (120).
SOAK_SECONDS ?= 120
soak: install
	$(BIN)/python -m bench.soak --seconds $(SOAK_SECONDS) $(SOAK_ARGS)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) staticfiles db.sqlite3
