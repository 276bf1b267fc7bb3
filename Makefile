# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv run demo test test-only deploy-check fuzz lint fmt bench promtool redis-server chromium clean

$(STAMP): pyproject.toml examples/gateway-plugin-greeting/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' -e examples/gateway-plugin-greeting
	touch $(STAMP)

venv: $(STAMP)

## run: the demo services (9001-9003) and the gateway on :8080 (admin :9901) with ./routes.toml
run: venv
	@trap 'kill $$demo 2>/dev/null' EXIT INT TERM; \
	$(VENV)/bin/gateway demo & demo=$$!; \
	sleep 0.5; \
	$(VENV)/bin/gateway run routes.toml

## test: lint, then the whole suite (integration tests start their own servers, and their own
## redis-server on a free port; under CI=true a missing redis-server fails the Redis tests)
test: venv promtool redis-server chromium lint deploy-check test-only

test-only: venv
	$(PY) -m pytest -q

## deploy-check: deploy/ without Docker or a cluster: the Prometheus config, rules and their unit
## tests (promtool), the k8s manifests rendered and validated against the Kubernetes schemas, and
## tests/deploy (PromQL names against the real registry, runbooks, compose, image tags, docs)
deploy-check: venv promtool
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/rules.yml
	promtool test rules deploy/prometheus/rules_test.yml
	$(VENV)/bin/kubectl kustomize deploy/k8s > $(VENV)/deploy-k8s.yaml
	$(VENV)/bin/kubernetes-validate --strict --quiet $(VENV)/deploy-k8s.yaml
	$(PY) -m pytest -q -p no:cacheprovider tests/deploy

## fuzz: the property-based tests with many more examples (HYPOTHESIS_PROFILE=fuzz: 20000 each)
fuzz: venv
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -p no:cacheprovider --hypothesis-show-statistics \
	  tests/unit/test_normalize.py tests/unit/test_hygiene.py tests/unit/test_orch_engine.py \
	  tests/unit/test_json_bounds.py tests/integration/test_upstream_framing.py

## promtool checks /metrics in the tests; it comes from Debian's prometheus package
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing promtool (Debian package prometheus)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

## chromium: a real headless browser for the admin status page test (Debian package chromium)
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package chromium)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package redis-server)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }

## lint: ruff, mypy --strict, and the package structure (no import cycle, modules under 500 lines)
lint: venv
	$(VENV)/bin/ruff check gateway plugins tests bench examples
	$(VENV)/bin/mypy gateway plugins tests bench examples
	$(PY) -m pytest -q -p no:cacheprovider tests/unit/test_imports.py

fmt: venv
	$(VENV)/bin/ruff check --fix gateway plugins tests bench examples

## bench: nginx upstream, direct vs naive aiohttp proxy vs gateway, measured with wrk
bench: venv
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
