# Two commands on a fresh clone: `make run` serves the API, `make test` runs every test.
# Only Python 3.11 and make are needed; the virtual environment is made on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
PORT ?= 8000
export PORT

.PHONY: install run migrate test lint typecheck schema proto bench soak clean

install: $(STAMP)

$(STAMP): requirements-dev.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.lock
	@touch $@

# Migrations get 30 s: a database that is down or hangs is reported, and the server
# starts anyway (its health endpoint then says db FATAL).
migrate: install
	@timeout 30 $(BIN)/python manage.py migrate --noinput \
	  || echo "make run: migrations did not run (is the database reachable?); serving anyway." >&2

# Without DJANGO_SECRET_KEY, development mode (DJANGO_DEBUG=true) with a throwaway key.
run: export DJANGO_DEBUG := $(or $(DJANGO_DEBUG),$(if $(DJANGO_SECRET_KEY),false,true))
run: migrate
	exec $(BIN)/gunicorn -c gunicorn.conf.py letraz.wsgi:application

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

test: lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

# The soak (bench/soak.py): probes at a steady rate while the peers flap through fault
# proxies; fails on a 500, a slow probe or growth. SOAK_SECONDS of flapping (120).
SOAK_SECONDS ?= 120
soak: install
	$(BIN)/python -m bench.soak --seconds $(SOAK_SECONDS) $(SOAK_ARGS)

clean:
	rm -rf $(VENV) staticfiles db.sqlite3
