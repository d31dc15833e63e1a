# papo — the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium
NATS_SERVER := /usr/sbin/nats-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test lint bench bench-core bench-realtime bench-assistants bench-web bench-whatsapp bench-ops bench-scale bench-knowledge lock clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

run: install
	$(BIN)/papo migrate
	$(BIN)/papo serve --demo

test: install $(CHROMIUM) $(NATS_SERVER)
	$(BIN)/pytest

# The browser tests drive Debian's Chromium (Playwright cannot download its own here).
$(CHROMIUM):
	$(SUDO) apt-get install -y -q chromium || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)

# The NATS tests start a nats-server of their own with JetStream (Debian's package), like the
# embedded PostgreSQL: no NATS needs to be running.
$(NATS_SERVER):
	$(SUDO) apt-get install -y -q nats-server || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q nats-server)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: bench-core bench-realtime bench-assistants bench-web bench-whatsapp bench-ops bench-scale bench-knowledge

bench-core: install
	$(BIN)/python bench/run.py

bench-realtime: install
	$(BIN)/python bench/realtime.py

bench-assistants: install
	$(BIN)/python bench/assistants.py

bench-knowledge: install
	$(BIN)/python bench/knowledge.py

bench-web: install $(CHROMIUM)
	$(BIN)/python bench/web.py

bench-whatsapp: install
	$(BIN)/python bench/whatsapp.py

bench-scale: install
	$(BIN)/python bench/scale.py

bench-ops: install
	$(BIN)/python bench/ops.py

# Regenerate the lock file (needs pip-tools); no index URLs are written into it.
lock:
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --strip-extras --extra dev --no-emit-index-url --no-emit-find-links \
		--no-emit-trusted-host --output-file requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
